"""The typed configuration tree: dataclasses with help text, named flavors, YAML and dotted overrides.

One `Config` describes a run. Flavors (`debug`, `electra-small`, `-base`, `-large`) carry the
paper's hyperparameters; YAML files and `key.sub=value` overrides change them; `validate()`
collects every problem and raises once. ZeRO/engine settings live only in the DeepSpeed JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml


class ConfigError(ValueError):
    """Raised once with every problem found in a config, one per line."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(f"{len(problems)} problem(s) in the config{where}:\n  - " + "\n  - ".join(problems))


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class EncoderConfig:
    """A post-LN BERT encoder stack."""

    num_layers: int = _f(12, "transformer blocks")
    hidden_size: int = _f(256, "width of the residual stream")
    num_heads: int = _f(4, "attention heads (hidden_size must divide evenly)")
    intermediate_size: int = _f(1024, "feed-forward inner width")


@dataclass
class ModelConfig:
    """Shared embeddings + generator + discriminator."""

    vocab_size: int = _f(30522, "tokenizer vocabulary size (taken from the tokenizer when one is given)")
    pad_vocab_multiple: int = _f(128, "pad the embedding rows to a multiple of this × tensor_parallel_size (1: no padding)")
    embedding_size: int = _f(128, "token/position/type embedding width, projected to each encoder's hidden size")
    max_position_embeddings: int = _f(512, "longest sequence the position table holds")
    type_vocab_size: int = _f(2, "token-type (segment) ids")
    dropout: float = _f(0.1, "hidden dropout probability")
    attention_dropout: float = _f(0.1, "attention-probability dropout")
    layer_norm_eps: float = _f(1e-12, "LayerNorm epsilon (BERT/ELECTRA use 1e-12)")
    initializer_range: float = _f(0.02, "std of the normal weight init")
    discriminator: EncoderConfig = _f(EncoderConfig(), "the discriminator encoder (the model we keep)")
    generator: EncoderConfig = _f(EncoderConfig(12, 64, 1, 256), "the generator encoder (a small MLM)")

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        m = max(1, self.pad_vocab_multiple) * tensor_parallel_size
        return int(math.ceil(self.vocab_size / m) * m)


@dataclass
class ObjectiveConfig:
    """What is learned: ELECTRA replaced-token detection, or BERT-style MLM as a baseline."""

    kind: str = _f("electra", "pre-training objective", ("electra", "mlm"))
    mask_prob: float = _f(0.15, "fraction of non-pad tokens masked per sequence")
    mask_token_fraction: float = _f(0.85, "of the masked positions, the fraction shown as [MASK] (the rest keep their token)")
    generator_weight: float = _f(1.0, "weight of the generator MLM loss")
    discriminator_weight: float = _f(50.0, "λ: weight of the discriminator loss")
    temperature: float = _f(1.0, "Gumbel sampling temperature")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and linear decay to zero, as the official recipe."""

    lr: float = _f(5e-4, "peak learning rate")
    weight_decay: float = _f(0.01, "decoupled weight decay (not on LayerNorm or biases)")
    beta1: float = _f(0.9, "Adam β1")
    beta2: float = _f(0.999, "Adam β2")
    eps: float = _f(1e-6, "Adam ε")
    warmup_steps: int = _f(10000, "linear warm-up steps")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)")


@dataclass
class TrainConfig:
    """Batch, length, steps and precision of the run."""

    seq_len: int = _f(128, "tokens per sequence (must match the shards)")
    global_batch_size: int = _f(128, "sequences per optimizer step, over all data-parallel ranks")
    micro_batch_size: int = _f(128, "sequences per rank per forward/backward")
    max_steps: int = _f(1_000_000, "optimizer steps")
    log_interval: int = _f(100, "steps between metric records")
    save_interval: int = _f(5000, "steps between checkpoints")
    keep_last: int = _f(3, "complete checkpoints kept")
    seed: int = _f(1234, "seed for weights, data order, masking and sampling")
    precision: str = _f("bf16", "compute precision", ("fp32", "bf16", "fp16"))
    compile: bool = _f(False, "torch.compile each encoder block (fuses bias+GeLU, residual+LayerNorm) and the "
                              "Gumbel sampling (electra_dist/kernels)")


@dataclass
class ParallelConfig:
    """Tensor parallelism (megatron-core); data parallelism is whatever ranks remain."""

    tensor_parallel_size: int = _f(1, "ranks that split each layer")


@dataclass
class DataConfig:
    """Where the shards and tokenizer are and how they are streamed."""

    shards: str = _f("", "shard directory (with manifest.json), glob, brace list or URL")
    tokenizer: str = _f("", "tokenizer directory (SentencePiece model + special ids)")
    num_workers: int = _f(2, "loader worker processes per rank")
    shuffle_buffer: int = _f(1000, "samples held for shuffling")
    on_corrupt: str = _f("error", "what a corrupt shard does", ("error", "skip"))
    dp_split: str = _f("shards", "how data-parallel ranks share the data: 'shards' (each reads its own shards) or "
                       "'batch' (all read one stream of global batches and take their rows: the same data order "
                       "for any DP size, at DP× the reading)", ("shards", "batch"))


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = _f(True, "log to MLflow from global rank 0")
    uri: str = _f("", "tracking URI; empty: $MLFLOW_TRACKING_URI, else a SQLite store in the output dir")
    experiment: str = _f("electra", "MLflow experiment name")
    run_name: str = _f("", "MLflow run name (empty: flavor + time)")
    flush_timeout: float = _f(30.0, "seconds to keep trying to reach MLflow at the end before giving up (and "
                              "saying what was not sent)")
    log_hf_export: bool = _f(False, "at the end, export the model to Hugging Face format and log it as artifacts")


@dataclass
class Config:
    """One pre-training run."""

    flavor: str = _f("custom", "the named flavor this config started from")
    output_dir: str = _f("runs/default", "checkpoints, metrics JSONL and the local MLflow store")
    model: ModelConfig = _f(ModelConfig(), "model shape")
    objective: ObjectiveConfig = _f(ObjectiveConfig(), "pre-training objective")
    optim: OptimConfig = _f(OptimConfig(), "optimizer and schedule")
    train: TrainConfig = _f(TrainConfig(), "batch, steps, precision")
    parallel: ParallelConfig = _f(ParallelConfig(), "tensor parallelism")
    data: DataConfig = _f(DataConfig(), "shards and tokenizer")
    tracking: TrackingConfig = _f(TrackingConfig(), "MLflow")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Config":
        """A named flavor, with optional dotted-key overrides (`model.dropout=0.0`)."""
        key = name.replace("_", "-")
        if key not in FLAVORS:
            raise ConfigError([f"flavor: {name!r} is unknown; choose one of {sorted(FLAVORS)}"])
        cfg = FLAVORS[key]()
        if overrides:
            cfg.apply_overrides({k.replace("__", "."): v for k, v in overrides.items()})
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        """A YAML file: its `flavor` (if any) is the base, every other key overrides it."""
        cfg, problems = cls._from_yaml(Path(path))
        if problems:
            raise ConfigError(problems, source=str(path))
        return cfg

    @classmethod
    def load(cls, spec: str) -> "Config":
        """A YAML path, or a flavor name."""
        cfg, problems = cls._load(spec)
        if problems:
            raise ConfigError(problems, source=spec)
        return cfg

    @classmethod
    def _load(cls, spec: str) -> tuple["Config", list[str]]:
        if spec.replace("_", "-") in FLAVORS and not Path(spec).exists():
            return cls.from_name(spec), []
        return cls._from_yaml(Path(spec))

    @classmethod
    def _from_yaml(cls, path: Path) -> tuple["Config", list[str]]:
        if not path.is_file():
            raise ConfigError([f"config file {path} does not exist (flavors: {', '.join(FLAVORS)})"])
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source=str(path)) from None
        if not isinstance(data, dict):
            raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source=str(path))
        flavor = str(data.get("flavor", "custom"))
        cfg = FLAVORS[flavor]() if flavor in FLAVORS else cls(flavor=flavor)
        return cfg, cfg._set_all(dict(_flatten(data)))

    # ---- overrides ----------------------------------------------------------------------
    def apply_overrides(self, overrides: dict[str, Any] | list[str], source: str | None = None) -> "Config":
        """Set dotted keys. Strings (`a.b=1` or values from the CLI) are parsed as YAML scalars.

        Every malformed item, unknown key and value of the wrong type is collected; one
        ConfigError names them all.
        """
        problems = self._set_all(overrides)
        if problems:
            raise ConfigError(problems, source)
        return self

    @classmethod
    def build(cls, spec: str, overrides: dict[str, Any] | list[str] = ()) -> "Config":
        """`load(spec)` + overrides + `validate()`, with ONE error listing every problem of all three."""
        cfg, problems = cls._load(spec)
        problems += cfg._set_all(list(overrides) if not isinstance(overrides, dict) else overrides)
        try:
            cfg.validate()
        except ConfigError as e:
            problems += [p for p in e.problems if p not in problems]
        if problems:
            raise ConfigError(problems, spec if Path(spec).exists() else None)
        return cfg

    def _set_all(self, overrides: dict[str, Any] | list[str]) -> list[str]:
        problems: list[str] = []
        if isinstance(overrides, (list, tuple)):
            pairs: dict[str, Any] = {}
            for item in overrides:
                if "=" not in item:
                    problems.append(f"override {item!r} is not of the form key.sub=value")
                    continue
                k, v = item.split("=", 1)
                pairs[k.strip().lstrip("-")] = v
            overrides = pairs
        known = {k: t for k, t, _ in self.fields()}
        for key, raw in overrides.items():
            if key not in known:
                close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"{key}: unknown key{hint}")
                continue
            try:
                value = _coerce(raw, known[key])
            except ValueError as e:
                problems.append(f"{key}: {raw!r} is not {e}")
                continue
            obj = self
            *parents, leaf = key.split(".")
            for p in parents:
                obj = getattr(obj, p)
            setattr(obj, leaf, value)
        return problems

    # ---- introspection ------------------------------------------------------------------
    def fields(self) -> Iterator[tuple[str, type, dict]]:
        """(dotted key, type, metadata) for every leaf field."""
        yield from _leaf_fields(type(self), "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return dict(_flatten(self.to_dict()))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    # ---- validation ---------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check everything that can be checked without devices; raise one error naming all problems."""
        p: list[str] = []
        m, o, t, op = self.model, self.objective, self.train, self.optim
        tp = self.parallel.tensor_parallel_size

        flat = self.flat()
        for key, _, meta in self.fields():
            if meta.get("choices") and flat[key] not in meta["choices"]:
                p.append(f"{key}: {flat[key]!r} is not one of {list(meta['choices'])}")

        positive = ["model.vocab_size", "model.pad_vocab_multiple", "model.embedding_size",
                    "model.max_position_embeddings", "model.type_vocab_size", "train.seq_len",
                    "train.global_batch_size", "train.micro_batch_size", "train.max_steps",
                    "train.log_interval", "train.save_interval", "train.keep_last",
                    "parallel.tensor_parallel_size"]
        for side in ("discriminator", "generator"):
            positive += [f"model.{side}.{k}" for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size")]
        not_positive = [f"{key}: {flat[key]!r} must be a positive integer" for key in positive
                        if not isinstance(flat[key], int) or flat[key] < 1]
        if not_positive:  # the arithmetic checks below need sane numbers
            raise ConfigError(p + not_positive)

        for side in ("discriminator", "generator"):
            enc: EncoderConfig = getattr(m, side)
            if enc.hidden_size % enc.num_heads:
                p.append(f"model.{side}.hidden_size: {enc.hidden_size} is not divisible by "
                         f"model.{side}.num_heads={enc.num_heads}")
            if enc.num_heads % tp:
                p.append(f"model.{side}.num_heads: {enc.num_heads} is not divisible by "
                         f"parallel.tensor_parallel_size={tp}")
            if enc.intermediate_size % tp:
                p.append(f"model.{side}.intermediate_size: {enc.intermediate_size} is not divisible by "
                         f"parallel.tensor_parallel_size={tp}")
        if m.generator.hidden_size > m.discriminator.hidden_size:
            p.append(f"model.generator.hidden_size: {m.generator.hidden_size} is wider than "
                     f"model.discriminator.hidden_size={m.discriminator.hidden_size}; ELECTRA needs a "
                     "smaller generator (the paper uses 1/4 to 1/2 of the discriminator's width)")
        if not 0.0 < o.mask_prob < 1.0:
            p.append(f"objective.mask_prob: {o.mask_prob} must lie in (0, 1)")
        if not 0.0 <= o.mask_token_fraction <= 1.0:
            p.append(f"objective.mask_token_fraction: {o.mask_token_fraction} must lie in [0, 1]")
        if o.temperature <= 0:
            p.append(f"objective.temperature: {o.temperature} must be > 0")
        if o.discriminator_weight < 0 or o.generator_weight < 0:
            p.append("objective.*_weight: loss weights must be >= 0")
        for key in ("model.dropout", "model.attention_dropout"):
            if not 0.0 <= flat[key] < 1.0:
                p.append(f"{key}: {flat[key]} must lie in [0, 1)")
        if t.seq_len > m.max_position_embeddings:
            p.append(f"train.seq_len: {t.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}")
        if t.global_batch_size % t.micro_batch_size:
            p.append(f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
                     f"train.micro_batch_size={t.micro_batch_size}")
        if op.lr <= 0:
            p.append(f"optim.lr: {op.lr} must be > 0")
        if op.warmup_steps < 0:
            p.append(f"optim.warmup_steps: {op.warmup_steps} must be >= 0")
        if not (0 <= op.beta1 < 1 and 0 <= op.beta2 < 1):
            p.append(f"optim.beta1/beta2: ({op.beta1}, {op.beta2}) must lie in [0, 1)")
        if op.grad_clip < 0:
            p.append(f"optim.grad_clip: {op.grad_clip} must be >= 0")
        if self.data.num_workers < 0:
            p.append(f"data.num_workers: {self.data.num_workers} must be >= 0")
        if p:
            raise ConfigError(p)
        return self


# ---- flavors ------------------------------------------------------------------------------

def _debug() -> Config:
    c = Config(flavor="debug", output_dir="runs/debug")
    c.model = ModelConfig(vocab_size=8000, embedding_size=64, max_position_embeddings=128,
                          discriminator=EncoderConfig(2, 64, 2, 256),
                          generator=EncoderConfig(2, 32, 1, 128))
    c.train = TrainConfig(seq_len=128, global_batch_size=16, micro_batch_size=16, max_steps=200,
                          log_interval=10, save_interval=100, precision="fp32")
    c.optim = OptimConfig(lr=1e-3, warmup_steps=20)
    c.tracking.experiment = "electra-debug"
    return c


def _small() -> Config:
    c = Config(flavor="electra-small", output_dir="runs/electra-small")
    c.model = ModelConfig(embedding_size=128, discriminator=EncoderConfig(12, 256, 4, 1024),
                          generator=EncoderConfig(12, 64, 1, 256))
    c.train = TrainConfig(seq_len=128, global_batch_size=128, micro_batch_size=128, max_steps=1_000_000)
    c.optim = OptimConfig(lr=5e-4, warmup_steps=10000)
    c.objective = ObjectiveConfig(mask_prob=0.15)
    return c


def _base() -> Config:
    c = Config(flavor="electra-base", output_dir="runs/electra-base")
    c.model = ModelConfig(embedding_size=768, discriminator=EncoderConfig(12, 768, 12, 3072),
                          generator=EncoderConfig(12, 256, 4, 1024))
    c.train = TrainConfig(seq_len=512, global_batch_size=256, micro_batch_size=32, max_steps=766_000)
    c.optim = OptimConfig(lr=2e-4, warmup_steps=10000)
    c.objective = ObjectiveConfig(mask_prob=0.15)
    return c


def _large() -> Config:
    c = Config(flavor="electra-large", output_dir="runs/electra-large")
    c.model = ModelConfig(embedding_size=1024, discriminator=EncoderConfig(24, 1024, 16, 4096),
                          generator=EncoderConfig(24, 256, 4, 1024))
    c.train = TrainConfig(seq_len=512, global_batch_size=2048, micro_batch_size=32, max_steps=400_000)
    c.optim = OptimConfig(lr=2e-4, warmup_steps=10000)
    c.objective = ObjectiveConfig(mask_prob=0.25)
    return c


FLAVORS = {"debug": _debug, "electra-small": _small, "electra-base": _base, "electra-large": _large}


# ---- helpers ------------------------------------------------------------------------------

def _leaf_fields(cls: type, prefix: str) -> Iterator[tuple[str, type, dict]]:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from _leaf_fields(t, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", t, dict(f.metadata)


def _hints(cls: type) -> dict[str, type]:
    import typing

    return typing.get_type_hints(cls)


def _flatten(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _coerce(raw: Any, typ: type) -> Any:
    value = yaml.safe_load(raw) if isinstance(raw, str) and typ is not str else raw
    if typ in (int, float) and isinstance(value, str):  # YAML 1.1 reads "2e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("a boolean (true/false)")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ValueError("an integer")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("a number")
        return float(value)
    if typ is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ValueError("a string")
        return str(value)
    return value


# ---- the DeepSpeed JSON -------------------------------------------------------------------

AUTO = "auto"


def resolve_deepspeed_config(cfg: Config, ds: dict[str, Any], dp_size: int, source: str = "DeepSpeed JSON") -> dict[str, Any]:
    """Fill the DeepSpeed JSON's "auto" values from the config and check every explicit one.

    The JSON owns ZeRO and engine settings; our config owns batch, precision, clipping and the
    optimizer. Every disagreement is collected into ONE ConfigError naming key, value and fix.
    """
    ds = copy.deepcopy(ds)
    t = cfg.train
    problems: list[str] = []
    per_step = t.micro_batch_size * dp_size
    if t.global_batch_size % per_step:
        problems.append(
            f"train.global_batch_size: {t.global_batch_size} is not a multiple of train.micro_batch_size "
            f"({t.micro_batch_size}) × data-parallel size ({dp_size}) = {per_step}; choose a global batch "
            f"that is, or another micro batch")
        gas = max(1, t.global_batch_size // per_step)
    else:
        gas = t.global_batch_size // per_step
    expected = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    for key, value in expected.items():
        given = ds.get(key, AUTO)
        if given == AUTO:
            ds[key] = value
        elif given != value:
            problems.append(f"{source}: {key} is {given!r} but the config implies {value!r} "
                            f"(set it to \"auto\" or change the config)")
    for prec in ("bf16", "fp16"):
        block = ds.setdefault(prec, {})
        want = t.precision == prec
        given = block.get("enabled", AUTO)
        if given == AUTO:
            block["enabled"] = want
        elif bool(given) != want:
            problems.append(f"{source}: {prec}.enabled is {given!r} but train.precision={t.precision!r} "
                            f"(set it to \"auto\" or train.precision={prec if given else 'fp32'})")
    for block in ("optimizer", "scheduler"):
        if block in ds:
            problems.append(f"{source}: has an {block!r} block; the optimizer and LR schedule come from the "
                            f"config's optim.* keys (AdamW without decay on LayerNorm/bias, warm-up + linear "
                            f"decay): remove the block")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"{source}: zero_optimization.stage {stage!r} is not 0, 1, 2 or 3")
    if problems:
        raise ConfigError(problems)
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"--deepspeed: {path} does not exist (see configs/zero*.json)"])
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError([f"not valid JSON: {e}"], source=str(path)) from None
