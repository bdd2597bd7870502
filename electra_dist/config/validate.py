"""Config validation: every problem that can be found without devices, raised once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from electra_dist.config.schema import ConfigError, EncoderConfig

if TYPE_CHECKING:
    from electra_dist.config.tree import Config


def validate(cfg: Config) -> Config:
    """Check everything that can be checked without devices; raise one error naming all problems."""
    p: list[str] = []
    m, o, t, op = cfg.model, cfg.objective, cfg.train, cfg.optim
    tp = cfg.parallel.tensor_parallel_size

    flat = cfg.flat()
    for key, _, meta in cfg.fields():
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
    if cfg.data.num_workers < 0:
        p.append(f"data.num_workers: {cfg.data.num_workers} must be >= 0")
    if p:
        raise ConfigError(p)
    return cfg
