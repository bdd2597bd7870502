"""The step between the user's config and the build: what the run's config becomes once it meets its
weights (train.init_from's shape) and its data (the tokenizer's vocabulary, the shards), validated once
more and frozen. Nothing here imports DeepSpeed or megatron: a wrong path fails within seconds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from electra_dist.config import Config
from electra_dist.data.vocab import SpecialIds
from electra_dist.training.datacheck import check_data

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    """A run's config as it will be built: resolved against its weights and data, validated, frozen."""

    cfg: Config
    special: SpecialIds  # the tokenizer's special-token ids
    source: Any = None  # train.init_from's weights (training.init_from.InitSource), when there are some
    generator: Any = None  # objective.generator=frozen: model.generator_from's masked LM (interop.mlm.MlmSource)


def resolve(cfg: Config, explicit: set[str] = frozenset()) -> Resolved:
    """Before anything is built: the model takes train.init_from's shape (a shape key the user set in
    `explicit` that contradicts it is an error) and the tokenizer's vocabulary, tokenizer and shards are
    checked against each other; then the resolved config is validated — every problem in one error — and
    frozen."""
    source = None
    if cfg.train.init_from:
        from electra_dist.training.init_from import apply_shape, read_source

        source = read_source(cfg.train.init_from)
        for change in apply_shape(cfg, source, explicit):
            log.info(f"{change} (the shape of {cfg.train.init_from})")
    special = check_data(cfg)
    generator = _frozen_generator(cfg) if cfg.objective.generator == "frozen" and cfg.model.generator_from else None
    return Resolved(cfg.validate().freeze(), special, source, generator)


def _frozen_generator(cfg: Config):
    """model.generator_from's masked LM; model.generator takes its encoder's shape (the config records what
    corrupts). Its vocabulary must be the discriminator's, its position table as long as train.seq_len."""
    from electra_dist.config import ConfigError
    from electra_dist.interop.mlm import read_mlm

    src = read_mlm(cfg.model.generator_from)
    g, problems = src.cfg, []
    if g.vocab_size != cfg.model.vocab_size:
        problems.append(
            f"model.generator_from: {src.path} has a vocabulary of {g.vocab_size} tokens, the discriminator "
            f"{cfg.model.vocab_size} (its tokenizer's): a frozen generator must read the same token ids"
        )
    if g.max_position_embeddings < cfg.train.seq_len:
        problems.append(
            f"model.generator_from: {src.path} holds {g.max_position_embeddings} positions, "
            f"train.seq_len is {cfg.train.seq_len}"
        )
    if problems:
        raise ConfigError(problems)
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
        if getattr(cfg.model.generator, key) != getattr(g.generator, key):
            log.info(f"model.generator.{key} {getattr(cfg.model.generator, key)} → {getattr(g.generator, key)} "
                     f"(the frozen generator's)")  # fmt: skip
            setattr(cfg.model.generator, key, getattr(g.generator, key))
    log.info(f"frozen generator: {src.path} ({src.kind}, checksum {src.checksum[:12]})")
    return src
