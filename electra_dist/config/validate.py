"""Config validation: every problem that can be found without devices, raised once."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from electra_dist.config.schema import ConfigError, EncoderConfig

if TYPE_CHECKING:
    from electra_dist.config.tree import Config


def validate(cfg: Config) -> Config:
    """Check everything that can be checked without devices; raise one error naming all problems."""
    p: list[str] = []
    flat = cfg.flat()
    for key, _, meta in cfg.fields():
        if meta.get("choices") and flat[key] not in meta["choices"]:
            p.append(f"{key}: {flat[key]!r} is not one of {list(meta['choices'])}")

    positive = [
        "model.vocab_size",
        "model.pad_vocab_multiple",
        "model.embedding_size",
        "model.max_position_embeddings",
        "model.type_vocab_size",
        "train.seq_len",
        "train.global_batch_size",
        "train.micro_batch_size",
        "train.max_steps",
        "train.log_interval",
        "train.save_interval",
        "train.keep_last",
        "parallel.tensor_parallel_size",
    ]
    for side in ("discriminator", "generator"):
        positive += [f"model.{side}.{k}" for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size")]
    bad_ints = [key for key in positive if not isinstance(flat[key], int) or flat[key] < 1]
    p += [f"{key}: {flat[key]!r} must be a positive integer" for key in bad_ints]
    nonfinite = [key for key, typ, _ in cfg.fields() if typ is float and not math.isfinite(flat[key])]
    p += [f"{key}: {flat[key]!r} must be a finite number" for key in nonfinite]
    for key in (
        "data.num_workers",
        "data.shuffle_buffer",
        "optim.warmup_steps",
        "train.eval_interval",
        "train.eval_samples",
    ):
        if flat[key] < 0:
            p.append(f"{key}: {flat[key]} must be >= 0")
    for key in ("collective_timeout", "stop_timeout"):
        if not getattr(cfg.parallel, key) > 0:
            p.append(f"parallel.{key}: {getattr(cfg.parallel, key)} must be > 0 seconds")
    try:
        cfg.tracking.tag_dict()
    except ValueError as e:
        p.append(str(e))
    if cfg.tracking.uri and (problem := uri_problem(cfg.tracking.uri)):
        p.append(f"tracking.uri: {problem}")
    elif (
        cfg.tracking.enabled
        and not cfg.tracking.uri
        and (problem := uri_problem(os.environ.get("MLFLOW_TRACKING_URI", "")))
    ):
        p.append(f"tracking.uri: $MLFLOW_TRACKING_URI={problem}")
    if cfg.tracking.flush_timeout < 0:
        p.append(f"tracking.flush_timeout: {cfg.tracking.flush_timeout} must be >= 0")
    if not bad_ints:  # the arithmetic below needs sane sizes; everything else is checked regardless
        _check_shapes(cfg, p)
    ranges: list[str] = []
    _check_values(cfg, ranges)
    p += [x for x in ranges if x.split(":")[0] not in nonfinite]  # a NaN is named once
    if p:
        raise ConfigError(p)
    return cfg


def _check_shapes(cfg: Config, p: list[str]) -> None:
    m, t, tp = cfg.model, cfg.train, cfg.parallel.tensor_parallel_size
    for side in ("discriminator", "generator"):
        enc: EncoderConfig = getattr(m, side)
        if enc.hidden_size % enc.num_heads:
            p.append(
                f"model.{side}.hidden_size: {enc.hidden_size} is not divisible by "
                f"model.{side}.num_heads={enc.num_heads}"
            )
        if enc.num_heads % tp:
            p.append(f"model.{side}.num_heads: {enc.num_heads} is not divisible by parallel.tensor_parallel_size={tp}")
        if enc.intermediate_size % tp:
            p.append(
                f"model.{side}.intermediate_size: {enc.intermediate_size} is not divisible by "
                f"parallel.tensor_parallel_size={tp}"
            )
    if m.generator.hidden_size > m.discriminator.hidden_size:
        p.append(
            f"model.generator.hidden_size: {m.generator.hidden_size} is wider than "
            f"model.discriminator.hidden_size={m.discriminator.hidden_size}; ELECTRA needs a "
            "smaller generator (the paper uses 1/4 to 1/2 of the discriminator's width)"
        )
    if t.seq_len > m.max_position_embeddings:
        p.append(f"train.seq_len: {t.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}")
    if t.global_batch_size % t.micro_batch_size:
        p.append(
            f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={t.micro_batch_size}"
        )
    if t.compile_mode != "default" and t.compile_backend != "inductor":
        p.append(
            f"train.compile_mode: {t.compile_mode!r} is an Inductor mode; train.compile_backend is "
            f"{t.compile_backend!r}"
        )
    kernels = {"cudnn", "flash", "efficient", "math"}  # model.layers.ATTENTION_BACKENDS
    names = [n.strip() for n in t.attention_backends.split(",")]
    if t.attention_backends != "torch" and (not all(names) or set(names) - kernels or len(set(names)) < len(names)):
        p.append(
            f"train.attention_backends: {t.attention_backends!r} is not 'torch' or a comma-separated order of "
            f"distinct SDPA kernels from {', '.join(sorted(kernels))}"
        )


def _check_values(cfg: Config, p: list[str]) -> None:
    """Ranges; a NaN fails every comparison, so each check is written to reject it too."""
    o, op, flat = cfg.objective, cfg.optim, cfg.flat()
    if not 0.0 < o.mask_prob < 1.0:
        p.append(f"objective.mask_prob: {o.mask_prob} must lie in (0, 1)")
    if not 0.0 <= o.mask_token_fraction <= 1.0:
        p.append(f"objective.mask_token_fraction: {o.mask_token_fraction} must lie in [0, 1]")
    if not o.temperature > 0:
        p.append(f"objective.temperature: {o.temperature} must be > 0")
    if not (o.discriminator_weight >= 0 and o.generator_weight >= 0):
        p.append("objective.*_weight: loss weights must be >= 0")
    for key in ("model.dropout", "model.attention_dropout"):
        if not 0.0 <= flat[key] < 1.0:
            p.append(f"{key}: {flat[key]} must lie in [0, 1)")
    if not op.lr > 0:
        p.append(f"optim.lr: {op.lr} must be > 0")
    if not (0 <= op.beta1 < 1 and 0 <= op.beta2 < 1):
        p.append(f"optim.beta1/beta2: ({op.beta1}, {op.beta2}) must lie in [0, 1)")
    if not op.grad_clip >= 0:
        p.append(f"optim.grad_clip: {op.grad_clip} must be >= 0")


# what MLflow's tracking stores accept (a plain path is a file store)
URI_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a tracking URI (a misspelled scheme is not an outage), else None."""
    if "://" not in uri and not uri.startswith("databricks"):
        return None  # a path
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        return (
            f"{uri!r} has the scheme {scheme!r}, which MLflow does not know (one of: {', '.join(URI_SCHEMES)}; "
            "or a path)"
        )
    return None
