"""Config: flavors, YAML files, dotted overrides, one error naming every problem. No devices."""

from pathlib import Path

import pytest

from electra_dist.config import FLAVORS, Config, ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_flavors_carry_the_papers_hyperparameters():
    s, b, large = (Config.from_name(n) for n in ("electra-small", "electra-base", "electra-large"))
    assert (
        s.model.discriminator.num_layers,
        s.model.discriminator.hidden_size,
        s.model.discriminator.num_heads,
        s.model.discriminator.intermediate_size,
        s.model.embedding_size,
    ) == (12, 256, 4, 1024, 128)
    assert (s.model.generator.hidden_size, s.model.generator.num_heads) == (64, 1)
    assert (b.model.discriminator.hidden_size, b.model.discriminator.num_heads, b.model.embedding_size) == (
        768,
        12,
        768,
    )
    assert (b.model.generator.hidden_size, b.model.generator.num_heads) == (256, 4)
    assert (
        large.model.discriminator.num_layers,
        large.model.discriminator.hidden_size,
        large.model.discriminator.num_heads,
        large.model.discriminator.intermediate_size,
    ) == (24, 1024, 16, 4096)
    assert (large.model.generator.hidden_size, large.model.generator.num_heads) == (256, 4)
    assert (s.objective.mask_prob, b.objective.mask_prob, large.objective.mask_prob) == (0.15, 0.15, 0.25)
    assert (s.optim.lr, b.optim.lr, large.optim.lr) == (5e-4, 2e-4, 2e-4)
    assert (s.train.global_batch_size, b.train.global_batch_size, large.train.global_batch_size) == (128, 256, 2048)
    assert (s.train.seq_len, b.train.seq_len, large.train.seq_len) == (128, 512, 512)
    assert (s.train.max_steps, b.train.max_steps) == (1_000_000, 766_000)
    for c in (s, b, large):
        assert c.objective.discriminator_weight == 50.0 and c.objective.generator_weight == 1.0
        assert (c.optim.beta1, c.optim.beta2, c.optim.eps, c.optim.weight_decay) == (0.9, 0.999, 1e-6, 0.01)
        assert c.optim.warmup_steps == 10000 and c.optim.grad_clip == 1.0
        assert c.model.dropout == 0.1
        c.validate()


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_yaml_files_equal_their_flavors(flavor):
    path = CONFIGS / f"{flavor.replace('-', '_')}.yaml"
    assert Config.from_yaml(path).to_dict() == Config.from_name(flavor).to_dict()


def test_dotted_overrides_are_typed():
    c = Config.from_name("debug").apply_overrides(
        [
            "model.dropout=0.0",
            "train.max_steps=50",
            "tracking.enabled=false",
            "data.shards=/x/{0..3}.tar",
            "optim.lr=2e-3",
            "train.max_steps=1e3",
        ]
    )
    assert c.model.dropout == 0.0 and c.train.max_steps == 1000 and c.tracking.enabled is False
    assert c.optim.lr == 0.002
    assert c.data.shards == "/x/{0..3}.tar"
    assert isinstance(c.train.max_steps, int)


def test_one_error_names_every_bad_key_and_value():
    with pytest.raises(ConfigError) as e:
        Config.build(
            "debug",
            [
                "model.discriminator.num_heads=3",
                "objective.mask_prob=1.5",
                "foo.bar=1",
                "train.seq_len=abc",
                "model.generator.hidden_size=128",
                "train.precision=fp8",
            ],
        )
    msg = str(e.value)
    for needle in (
        "model.discriminator.hidden_size: 64 is not divisible by model.discriminator.num_heads=3",
        "objective.mask_prob: 1.5",
        "foo.bar: unknown key",
        "train.seq_len: 'abc' is not an integer",
        "model.generator.hidden_size: 128 is wider",
        "train.precision: 'fp8' is not one of",
    ):
        assert needle in msg, msg
    assert len(e.value.problems) == 6


def test_tensor_parallel_divisibility_is_checked():
    with pytest.raises(ConfigError, match="num_heads: 1 is not divisible by parallel.tensor_parallel_size=2"):
        Config.build("electra-small", ["parallel.tensor_parallel_size=2"])


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("flavor: debug\nmodel:\n  hiden_size: 3\ntrain:\n  micro_batch_size: 5\n")
    with pytest.raises(ConfigError) as e:
        Config.build(str(bad))
    assert str(bad) in str(e.value)
    assert "model.hiden_size: unknown key" in str(e.value)
    assert "train.global_batch_size: 16 is not a multiple of train.micro_batch_size=5" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.build(str(tmp_path / "missing.yaml"))


def test_padded_vocab():
    c = Config.from_name("electra-small").model
    assert c.padded_vocab_size(1) == 30592 and c.padded_vocab_size(2) == 30720
    c.pad_vocab_multiple = 1
    assert c.padded_vocab_size(1) == 30522


def test_compile_switch_takes_auto_and_yaml_booleans(tmp_path):
    assert Config.from_name("debug").train.compile == "auto"  # on GPU, off on CPU
    f = tmp_path / "c.yaml"
    f.write_text("flavor: debug\ntrain:\n  compile: false\n")
    assert Config.from_yaml(f).train.compile == "false"
    assert Config.build("debug", ["train.compile=true"]).train.compile == "true"
    with pytest.raises(ConfigError, match="train.compile: 'sometimes' is not one of"):
        Config.build("debug", ["train.compile=sometimes"])


def test_nan_inf_negative_and_non_positive_values_are_all_named_in_one_error():
    with pytest.raises(ConfigError) as e:
        Config.build(
            "debug",
            [
                "optim.lr=.nan",
                "objective.temperature=.inf",
                "data.shuffle_buffer=-1",
                "tracking.flush_timeout=-2",
                "train.max_steps=0",
                "objective.mask_prob=2",
            ],
        )
    text = str(e.value)
    assert "6 problem(s)" in text, text  # a non-positive integer no longer hides the rest
    for needle in (
        "optim.lr: nan must be a finite number",
        "objective.temperature: inf must be a finite number",
        "data.shuffle_buffer: -1 must be >= 0",
        "tracking.flush_timeout: -2.0 must be >= 0",
        "train.max_steps: 0 must be a positive integer",
        "objective.mask_prob: 2.0 must lie in (0, 1)",
    ):
        assert needle in text, (needle, text)


def test_unknown_flavor_in_a_yaml_file_is_an_error_not_the_base_defaults(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("flavor: electra-smal\ntrain:\n  max_steps: 10\n")
    with pytest.raises(ConfigError, match="flavor: 'electra-smal' is unknown; choose one of"):
        Config.from_yaml(f)
    f.write_text("flavor: electra_small\n")  # the file names' spelling works too
    assert Config.from_yaml(f).model.discriminator.hidden_size == 256
    f.write_text("flavor: imported\n")  # what `import-hf` writes: the base defaults, on purpose
    assert Config.from_yaml(f).flavor == "imported"


def test_every_misspelled_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError) as e:
        Config.build(
            "debug",
            ["train.micro_batchsize=4", "optim.learning_rate=1e-3", "lr=3e-4", "model.dropuot=0", "tp=2", "zzz=1"],
        )
    text = str(e.value)
    for wrong, right in (
        ("train.micro_batchsize", "train.micro_batch_size"),
        ("optim.learning_rate", "optim.lr"),
        ("lr", "optim.lr"),
        ("model.dropuot", "model.dropout"),
        ("tp", "parallel.tensor_parallel_size"),
    ):
        assert f"{wrong}: unknown key (did you mean {right}?)" in text, text
    assert "zzz: unknown key\n" in text + "\n"


def test_a_flat_flag_points_to_its_config_key(capsys):
    from electra_dist.train import main

    with pytest.raises(SystemExit) as e:
        main(["--lr", "1e-3", "--micro-batch-size", "8"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--lr is not a flag; set config keys as KEY=VALUE (did you mean optim.lr?)" in err
    assert (
        "--micro-batch-size is not a flag; set config keys as KEY=VALUE (did you mean train.micro_batch_size?)" in err
    )


def test_flavors_are_data_every_key_a_config_key():
    """A flavor is the dotted overrides of the base defaults (no code, no import side effect)."""
    from electra_dist.config.flavors import FLAVORS

    known = {k for k, _, _ in Config().fields()}
    for name, overrides in FLAVORS.items():
        assert isinstance(overrides, dict) and set(overrides) <= known, (name, set(overrides) - known)
        assert Config.from_name(name).flavor == name


def test_a_run_config_is_resolved_validated_once_more_and_frozen(data):
    """The tokenizer's vocabulary goes into the config before the build, the result is validated, and from
    then on nothing changes it: an assignment is an error naming the field."""
    from electra_dist.training.resolve import resolve

    shards, tok = data
    cfg = Config.build(
        "debug",
        [f"data.shards={shards}", f"data.tokenizer={tok}", "train.seq_len=64", "model.max_position_embeddings=64"],
    )
    assert cfg.model.vocab_size == 8000 and not cfg.frozen
    resolved = resolve(cfg)
    assert resolved.cfg.frozen and resolved.cfg.model.vocab_size == 2000 and resolved.special.mask >= 0
    with pytest.raises(AttributeError, match="ModelConfig.vocab_size: the config is frozen"):
        resolved.cfg.model.vocab_size = 3000
    with pytest.raises(AttributeError, match="EncoderConfig.num_heads"):
        resolved.cfg.model.discriminator.num_heads = 4


def test_each_section_checks_itself_and_the_config_joins_them():
    from electra_dist.config import EncoderConfig, ObjectiveConfig

    assert EncoderConfig(2, 64, 3, 128).problems("model.generator.") == [
        "model.generator.hidden_size: 64 is not divisible by model.generator.num_heads=3"
    ]
    # a field out of its bounds is named; the checks across fields wait until the fields are sound
    assert EncoderConfig(2, 64, 0, 128).problems() == ["num_heads: 0 must be a positive integer"]
    assert ObjectiveConfig(mask_prob=0.0, temperature=float("nan")).problems("objective.") == [
        "objective.mask_prob: 0.0 must lie in (0, 1)",
        "objective.temperature: nan must be a finite number",
    ]
    cfg = Config.from_name("debug", **{"model.generator.num_heads": 3, "parallel.tensor_parallel_size": 2})
    assert cfg.problems() == [
        "model.generator.hidden_size: 32 is not divisible by model.generator.num_heads=3",
        "model.generator.num_heads: 3 is not divisible by parallel.tensor_parallel_size=2",
    ]
    assert Config.from_name("debug").problems() == []
