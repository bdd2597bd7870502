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
    return Resolved(cfg.validate().freeze(), special, source)
