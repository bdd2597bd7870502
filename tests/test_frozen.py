"""A frozen generator (objective.generator=frozen, model.generator_from): a published masked LM — BERT,
RoBERTa, ELECTRA's generator, saved by transformers — or one of our runs corrupts the input; it gets no
gradient, no optimizer state, no place in checkpoints, and its predictions are transformers' own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from electra_dist.config import Config, ConfigError
from electra_dist.interop.mlm import read_mlm
from electra_dist.model import ElectraPretrainer
from electra_dist.model.layers import LayerFactory
from electra_dist.training.build import frozen_generator
from electra_dist.training.flops import flops_per_sequence

from conftest import tiny_config, train_here

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def save_mlm(out: Path, model_type: str, vocab_size: int = 1000, positions: int = 64, seed: int = 0) -> Path:
    """A transformers *ForMaskedLM of `model_type`, every weight drawn (LayerNorms and biases off their init
    values, so a wrong mapping shows), saved with save_pretrained."""
    import transformers as t

    cls, config_cls = {
        "bert": (t.BertForMaskedLM, t.BertConfig),
        "roberta": (t.RobertaForMaskedLM, t.RobertaConfig),
        "electra": (t.ElectraForMaskedLM, t.ElectraConfig),
        "modernbert": (t.ModernBertForMaskedLM, t.ModernBertConfig),
    }[model_type]
    extra = {
        "electra": {"embedding_size": 16},
        "modernbert": {
            "num_hidden_layers": 4,
            "local_attention": 16,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "cls_token_id": 2,
            "sep_token_id": 3,
        },  # fmt: skip
    }.get(model_type, {})
    if model_type == "roberta":
        positions += 2  # rows 0 and 1 sit below its first position (padding id 1)
    c = config_cls(vocab_size=vocab_size, max_position_embeddings=positions, **{**SMALL, **extra})
    torch.manual_seed(seed)
    m = cls(c).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "word_embeddings" not in name:  # tied to the decoder: drawn once, by the model
                p.add_(torch.randn_like(p) * 0.05)
    m.save_pretrained(out)
    return out


def _ours(path: Path, cfg: Config | None = None):
    cfg = cfg or tiny_config()
    return frozen_generator(read_mlm(path), cfg, LayerFactory(0.02), 0).eval()


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "modernbert"])
def test_a_published_masked_lm_predicts_what_transformers_predicts(tmp_path, model_type):
    """Every logit of the frozen generator read from a transformers *ForMaskedLM directory is transformers'
    (fp32, ≤ 1e-5), on padded rows too: BERT's cls.predictions, RoBERTa's lm_head (and its position offset),
    ELECTRA's generator head with its embedding projection, ModernBERT's head over local and global layers."""
    import transformers as t

    d = save_mlm(tmp_path / model_type, model_type)
    ours = _ours(d)
    theirs = t.AutoModelForMaskedLM.from_pretrained(d).eval()
    ids = torch.randint(5, 1000, (3, 64), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    ids[1, 40:] = 1 if model_type == "roberta" else 0  # the padding id
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask, None)[..., :1000]  # the vocabulary rows past 1000 are padding
    keep = mask.bool()
    assert got.shape == want.shape
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[keep].argmax(-1), want[keep].argmax(-1))


def test_an_mlm_directory_without_its_head_or_of_another_vocabulary_is_refused_by_name(tmp_path):
    import transformers as t

    from electra_dist.training.resolve import _frozen_generator

    c = t.BertConfig(vocab_size=1000, max_position_embeddings=64, **SMALL)
    t.BertModel(c).save_pretrained(tmp_path / "encoder_only")
    with pytest.raises(ConfigError, match=r"encoder_only holds no masked-LM head"):
        read_mlm(tmp_path / "encoder_only")
    with pytest.raises(FileNotFoundError, match="model.generator_from: .*nowhere does not exist"):
        read_mlm(tmp_path / "nowhere")
    d = save_mlm(tmp_path / "bert", "bert")
    cfg = tiny_config(**{"objective.generator": "frozen", "model.generator_from": str(d), "model.vocab_size": 999})
    with pytest.raises(ConfigError, match=r"vocabulary of 1000 tokens, the discriminator 999"):
        _frozen_generator(cfg)


def test_frozen_mode_config_rules_are_named():
    def problems(**kv):
        return Config.from_name("debug", **kv).problems()

    assert any("needs model.generator_from" in p for p in problems(**{"objective.generator": "frozen"}))
    assert any("is for objective.generator=frozen" in p for p in problems(**{"model.generator_from": "x"}))
    frozen = {"objective.generator": "frozen", "model.generator_from": "x"}
    assert any("has no discriminator" in p for p in problems(**frozen, **{"objective.kind": "mlm"}))
    assert any("shares no embeddings" in p for p in problems(**frozen, **{"objective.embedding_sharing": "gdes"}))
    # a frozen generator may be wider than the discriminator (a BERT corrupting for a small ELECTRA)
    assert problems(**frozen, **{"model.generator.hidden_size": 1024}) == []


def test_flops_count_a_frozen_generator_forward_only(tmp_path):
    """A frozen generator costs a third of what training it would (forward, no backward), counted with its
    own shape and embedding width; the discriminator's part is unchanged."""
    import dataclasses

    cfg = tiny_config()
    g = read_mlm(save_mlm(tmp_path / "electra", "electra")).cfg  # embedding 16, hidden 32: not the model's

    def as_mlm(m):  # what training it alone (an MLM of its shape) costs
        return flops_per_sequence(dataclasses.replace(m, discriminator=m.generator), 64, 10, "mlm")

    frozen = flops_per_sequence(cfg.model, 64, 10, frozen=g)
    joint = flops_per_sequence(cfg.model, 64, 10)
    assert frozen - as_mlm(g) / 3 == pytest.approx(joint - as_mlm(cfg.model))
    assert as_mlm(g) != as_mlm(dataclasses.replace(g, embedding_size=cfg.model.embedding_size))


def test_the_frozen_generator_is_outside_the_module_tree_and_follows_its_casts(tmp_path):
    """Not in parameters(), state_dict() or named_modules(); `.to(dtype)` reaches it (what DeepSpeed's bf16
    cast does); no gradient through it."""
    d = save_mlm(tmp_path / "bert", "bert")
    cfg = tiny_config(**{"objective.generator": "frozen", "model.generator_from": str(d)})
    model = ElectraPretrainer(cfg.model, cfg.objective)
    with pytest.raises(RuntimeError, match="no generator attached"):
        model(_batch())
    model.attach_generator(_ours(d, cfg))
    assert model.generator is None and not any(k.startswith("generator") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.discriminator.parameters())
    out = model(_batch())
    out.loss.backward()
    assert all(p.grad is None for p in model.frozen_generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters() if p.requires_grad)
    assert float(out.loss) == pytest.approx(
        50 * float(out.discriminator_loss.detach())
    )  # its MLM loss is a metric only
    model.to(torch.bfloat16)
    assert next(model.frozen_generator.parameters()).dtype == torch.bfloat16


def _batch():
    from electra_dist.data.batch import Batch
    from electra_dist.data.masking import mask_tokens
    from electra_dist.data.vocab import SpecialIds

    ids = torch.randint(5, 1000, (4, 64), generator=torch.Generator().manual_seed(3))
    sid = torch.arange(4)
    return Batch.of(mask_tokens(ids, SpecialIds(), 0.15, sample_ids=sid), sid)


# ---- training with it ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, tok_dir) -> Path:
    """A BertForMaskedLM over the test tokenizer's vocabulary, saved by transformers."""
    from electra_dist.data.tokenizer import load_tokenizer

    vocab = load_tokenizer(tok_dir).vocab_size
    return save_mlm(tmp_path_factory.mktemp("bert") / "bert", "bert", vocab_size=vocab)


def frozen(d: Path) -> list[str]:
    return ["objective.generator=frozen", f"model.generator_from={d}"]


@pytest.mark.slow
def test_a_frozen_run_trains_the_discriminator_alone_and_resumes_exactly(tmp_path, data, bert_dir, cli):
    """Checkpoints hold the discriminator's weights and Adam state only, with the generator's path and
    checksum; the export writes the discriminator, and the generator only when asked (transformers' own
    predictions); a run resumed at step 3 logs the same losses and annealed temperatures; a resume with other
    generator weights is refused, naming both checksums."""
    from electra_dist.parallel import load_checkpoint_file
    from electra_dist.tracking import read_metrics

    schedule = ["objective.temperature_schedule=linear", "objective.temperature_start=3", "train.eval_interval=0"]
    args = ["--max-steps", "6", "train.save_interval=3", "train.keep_last=5", "model.dropout=0.1", *frozen(bert_dir)]
    args += schedule
    train_here(tmp_path, data, *args)
    straight = read_metrics(tmp_path / "metrics.jsonl")
    state = load_checkpoint_file(tmp_path / "checkpoints" / "step00000006" / "mp_rank_00_model_states.pt")
    assert state["module"] and not [k for k in state["module"] if k.startswith("generator")]
    assert state["frozen_generator"] == {"path": str(bert_dir), "checksum": read_mlm(bert_dir).checksum}
    adam = state["optimizer"]["state"].values()  # ZeRO-0: the torch AdamW's own state, one entry per parameter
    assert sum(s["exp_avg"].numel() for s in adam) == sum(t.numel() for t in state["module"].values())
    assert [r["objective/temperature"] for r in straight] == pytest.approx([3.0, 2.6, 2.2, 1.8, 1.4, 1.0])
    assert all(0 <= r["acc/generator"] < 1 and r["loss/generator"] > 0 for r in straight)  # a metric, still kept

    _exports(tmp_path / "final", bert_dir, cli)

    shutil.rmtree(tmp_path / "checkpoints" / "step00000006")
    shutil.rmtree(tmp_path / "final")
    (tmp_path / "checkpoints" / "latest").write_text("step00000003")
    assert "resumed from" in train_here(tmp_path, data, *args).stdout
    resumed = read_metrics(tmp_path / "metrics.jsonl")
    for key in ("loss/total", "objective/temperature"):
        assert [r[key] for r in resumed] == [r[key] for r in straight], key

    other = save_mlm(tmp_path / "other", "bert", vocab_size=read_mlm(bert_dir).cfg.vocab_size, seed=1)
    r = train_here(tmp_path, data, *args[:5], *frozen(other), *schedule, "--max-steps", "7", check=False)
    assert r.returncode != 0 and "now holds other weights" in r.stderr + r.stdout, r.stderr[-2000:]


def _exports(final: Path, bert_dir: Path, cli) -> None:
    import transformers as t

    assert cli("export", "--checkpoint", final, "--out", final.parent / "hf").returncode == 0
    assert sorted(p.name for p in (final.parent / "hf").iterdir() if not p.name.startswith(".")) == ["discriminator"]
    t.ElectraForPreTraining.from_pretrained(final.parent / "hf" / "discriminator")
    r = cli("export", "--checkpoint", final, "--out", final.parent / "hf2", "--with-frozen-generator")
    assert r.returncode == 0 and "generator (ElectraForMaskedLM)" in r.stdout, r.stderr
    exported = t.ElectraForMaskedLM.from_pretrained(final.parent / "hf2" / "generator").eval()
    bert = t.BertForMaskedLM.from_pretrained(bert_dir).eval()
    ids = torch.randint(5, bert.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, bert(ids).logits, atol=1e-5, rtol=1e-5)


def test_the_memory_estimate_counts_a_frozen_generator_as_weights_alone(tmp_path):
    """Its bf16 weights (shape read from its config.json), no gradient or Adam state, no saved activations:
    the discriminator's own numbers are those of a joint run, plus the frozen weights."""
    from electra_dist.training.memory import estimate

    d = save_mlm(tmp_path / "bert", "bert")
    joint = tiny_config()
    frozen = tiny_config(**{"objective.generator": "frozen", "model.generator_from": str(d)})
    j, f = estimate(joint, 4, 1, 2), estimate(frozen, 4, 1, 2)
    with torch.device("meta"):
        disc = sum(p.numel() for p in ElectraPretrainer(joint.model, joint.objective).discriminator.parameters())
    gen = sum(p.numel() for p in _ours(d, frozen).parameters())
    gib = 2**30
    assert f.weights == pytest.approx(2 * (disc + gen) / gib) and f.optimizer == pytest.approx(12 * disc / gib)
    assert f.gradients == pytest.approx(6 * disc / gib)
    assert 0 < f.activations < j.activations  # the discriminator's alone: the generator saves nothing
    from electra_dist.interop.mlm import mlm_shape

    for kind in ("roberta", "modernbert"):  # the shape from config.json alone is the one the weights load into
        m = save_mlm(tmp_path / kind, kind)
        assert mlm_shape(m) == read_mlm(m).cfg, kind


@pytest.mark.slow
def test_rtd_continues_from_a_bert_as_both_the_starting_discriminator_and_the_corrupter(tmp_path, data, bert_dir):
    """`--init-from bert/ objective.generator=frozen model.generator_from=bert/`: the discriminator starts as the
    BERT (only the RTD head is fresh), the BERT with its MLM head corrupts."""
    args = ["--max-steps", "2", "--init-from", str(bert_dir), *frozen(bert_dir), "train.eval_interval=0"]
    r = train_here(tmp_path, data, *args)
    assert "fresh: discriminator.discriminator_predictions\n" in r.stdout + "\n", r.stdout[-2000:]
    assert f"frozen generator: {bert_dir} (huggingface" in r.stdout
    cfg = Config.from_yaml(tmp_path / "config.yaml")
    assert cfg.model.discriminator.hidden_size == cfg.model.generator.hidden_size == SMALL["hidden_size"]
