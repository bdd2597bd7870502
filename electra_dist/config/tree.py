"""One `Config` per run: the tree of sections, YAML loading, dotted `key.sub=value` overrides.

A named flavor (flavors.py) is data: the dotted overrides of the base defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from electra_dist.config.flavors import FLAVORS
from electra_dist.config.schema import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    ParallelConfig,
    Section,
    TrackingConfig,
    TrainConfig,
    _divides,
    _f,
)

UNNAMED_FLAVORS = ("custom", "imported")  # start from the base defaults (`import-hf` writes "imported")


@dataclass
class Config(Section):
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
    def from_name(cls, name: str, **overrides: Any) -> Config:
        """A named flavor, with optional dotted-key overrides (`model.dropout=0.0`)."""
        key = name.replace("_", "-")
        if key not in FLAVORS:
            raise ConfigError([f"flavor: {name!r} is unknown; choose one of {sorted(FLAVORS)}"])
        cfg = flavor_config(key)
        if overrides:
            cfg.apply_overrides({k.replace("__", "."): v for k, v in overrides.items()})
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """A YAML file: its `flavor` (if any) is the base, every other key overrides it."""
        cfg, problems = cls._from_yaml(Path(path))
        if problems:
            raise ConfigError(problems, source=str(path))
        return cfg

    @classmethod
    def load(cls, spec: str) -> Config:
        """A YAML path, or a flavor name."""
        cfg, problems = cls._load(spec)
        if problems:
            raise ConfigError(problems, source=spec)
        return cfg

    @classmethod
    def _load(cls, spec: str) -> tuple[Config, list[str]]:
        if spec.replace("_", "-") in FLAVORS and not Path(spec).exists():
            return cls.from_name(spec), []
        return cls._from_yaml(Path(spec))

    @classmethod
    def _from_yaml(cls, path: Path) -> tuple[Config, list[str]]:
        if not path.is_file():
            raise ConfigError([f"config file {path} does not exist (flavors: {', '.join(FLAVORS)})"])
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source=str(path)) from None
        if not isinstance(data, dict):
            raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source=str(path))
        return _from_mapping(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Config:
        """A nested mapping as `to_dict()` writes it (a checkpoint's config): `flavor` the base, the rest overrides."""
        cfg, problems = _from_mapping(data)
        if problems:
            raise ConfigError(problems, source=source)
        return cfg

    # ---- overrides ----------------------------------------------------------------------
    def apply_overrides(self, overrides: dict[str, Any] | list[str], source: str | None = None) -> Config:
        """Set dotted keys. Strings (`a.b=1` or values from the CLI) are parsed as YAML scalars.

        Every malformed item, unknown key and value of the wrong type is collected; one
        ConfigError names them all.
        """
        problems = self._set_all(overrides)
        if problems:
            raise ConfigError(problems, source)
        return self

    @classmethod
    def build(cls, spec: str, overrides: dict[str, Any] | list[str] = ()) -> Config:
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
                problems.append(f"{key}: unknown key{_did_you_mean(key, known)}")
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
        return dict(flatten(self.to_dict()))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    # ---- validation ---------------------------------------------------------------------
    def freeze(self) -> Config:
        """Read-only from now on, every section too (see schema.Section)."""
        self._freeze()
        return self

    @property
    def frozen(self) -> bool:
        return bool(self.__dict__.get("_frozen"))

    def check(self, prefix: str = "") -> list[str]:
        """Across sections: the tensor-parallel split of each encoder, the sequence length against the
        position table. (Each section checks its own fields and their relations: schema.py.)"""
        m, t, tp = self.model, self.train, self.parallel.tensor_parallel_size
        p = []
        for side in ("discriminator", "generator"):
            enc = getattr(m, side)
            for key in ("num_heads", "intermediate_size"):
                if not _divides(getattr(enc, key), tp):
                    p.append(
                        f"model.{side}.{key}: {getattr(enc, key)} is not divisible by "
                        f"parallel.tensor_parallel_size={tp}"
                    )
        p += _generator_problems(self.objective, m)
        if t.seq_len > m.max_position_embeddings:
            p.append(f"train.seq_len: {t.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}")
        return p

    def validate(self) -> Config:
        """Check everything that can be checked without devices (`problems()`); raise one error naming them
        all, or return the config."""
        if problems := self.problems():
            raise ConfigError(problems)
        return self


# ---- helpers ------------------------------------------------------------------------------


def _generator_problems(o, m) -> list[str]:
    """objective.generator against model.generator_from, the objective and the embedding sharing."""
    if o.generator != "frozen":
        return (
            [f"model.generator_from: {m.generator_from!r} is for objective.generator=frozen (it is {o.generator!r})"]
            if m.generator_from
            else []
        )
    p = []
    if not m.generator_from:
        p.append("objective.generator=frozen needs model.generator_from=PATH (the masked LM that corrupts)")
    if o.kind != "electra":
        p.append(f"objective.generator=frozen: objective.kind={o.kind!r} has no discriminator to train")
    if o.embedding_sharing != "tied":
        p.append(
            f"objective.embedding_sharing={o.embedding_sharing!r}: a frozen generator shares no embeddings "
            "(the discriminator owns its own)"
        )
    return p


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


def suggest_key(name: str) -> str:
    """ " (did you mean section.key?)" for a flag or key the config does not have, or ""."""
    return _did_you_mean(name.lstrip("-").replace("-", "_"), {k: t for k, t, _ in Config().fields()})


def flavor_config(name: str) -> Config:
    """The base defaults with the flavor's overrides (a fresh Config each call)."""
    cfg = Config(flavor=name)
    problems = cfg._set_all(dict(FLAVORS[name]))
    assert not problems, problems  # the flavors are ours: tests/test_config.py holds them valid
    return cfg


def _from_mapping(data: dict[str, Any]) -> tuple[Config, list[str]]:
    """A nested mapping (YAML, a checkpoint's config): its `flavor` the base, every other key an override."""
    flavor = str(data.get("flavor", "custom"))
    if flavor.replace("_", "-") in FLAVORS:
        cfg = flavor_config(flavor.replace("_", "-"))
    elif flavor in UNNAMED_FLAVORS:
        cfg = Config(flavor=flavor)
    else:  # a typo would otherwise silently start from the base defaults
        return Config(flavor=flavor), [
            f"flavor: {flavor!r} is unknown; choose one of {sorted(FLAVORS)} or "
            f"{sorted(UNNAMED_FLAVORS)} (the base defaults)"
        ]
    return cfg, cfg._set_all(dict(flatten(data)))


def _did_you_mean(key: str, known: dict[str, Any]) -> str:
    """The closest known key: same leaf name (`lr` → optim.lr), else the most similar spelling."""
    import difflib

    leaf = {
        "learning_rate": "lr",
        "batch_size": "global_batch_size",
        "steps": "max_steps",
        "tp": "tensor_parallel_size",
        "tensor_parallel": "tensor_parallel_size",
        "workers": "num_workers",
    }.get(key.split(".")[-1], key.split(".")[-1])
    close = [k for k in known if k.split(".")[-1] == leaf]
    close = close or difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if not close:  # a misspelled leaf in the right section: train.micro_batchsize, optim.learning_rate
        by_leaf = {k.split(".")[-1]: k for k in known if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.5)]
    return f" (did you mean {close[0]}?)" if close else ""


def flatten(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts → (dotted key, value) pairs."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
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
        if isinstance(value, bool):  # YAML's true/false for a switch that also takes "auto"
            return str(value).lower()
        if not isinstance(value, (str, int, float)):
            raise ValueError("a string")
        return str(value)
    return value


def keys_help() -> str:
    """Every dotted config key with its type, default (of the base dataclass) and help: for --help."""
    lines = []
    defaults = Config().flat()
    for key, typ, meta in Config().fields():
        choices = f" {{{','.join(meta['choices'])}}}" if meta.get("choices") else ""
        choices += f" {meta['bounds']}" if meta.get("bounds") else ""
        lines.append(f"  {key} ({typ.__name__}{choices}, default {defaults[key]!r})\n      {meta.get('help', '')}")
    return "\n".join(lines)
