"""The data a run reads, checked in its first seconds (before DeepSpeed's imports): the tokenizer loads,
the shards exist and agree with it and the config, every listed shard (eval split too) is there with
its size and a tar header. Everything found goes into one ConfigError."""

from __future__ import annotations

import logging

from electra_dist.config import Config, ConfigError
from electra_dist.data.vocab import SpecialIds

log = logging.getLogger(__name__)


def check_data(cfg: Config) -> SpecialIds:
    """Tokenizer and shards exist and agree with each other and the config (vocab size taken from
    the tokenizer); every problem in one ConfigError. Returns the special-token ids."""
    from electra_dist.data.loader import resolve_shards
    from electra_dist.data.shards import check_compatible, check_shard_files
    from electra_dist.data.tokenizer import load_tokenizer

    d, problems = cfg.data, []
    tokenizer = manifest = None
    if d.tokenizer:
        try:
            tokenizer = load_tokenizer(d.tokenizer)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"data.tokenizer: {e}")
    if not d.shards:
        problems.append("data.shards: empty; pass --data DIR (build shards with `electra-dist shards build`)")
    else:
        try:
            urls, manifest = resolve_shards(d.shards)
            check_shard_files(urls + (eval_urls(cfg) if cfg.train.eval_interval else []), manifest)
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"data.shards: {e}")
    if manifest is not None:
        try:
            check_compatible(
                manifest,
                tokenizer,
                cfg.train.seq_len,
                where=f"shards in {d.shards}",
                max_positions=cfg.model.max_position_embeddings,
            )
        except ValueError as e:
            problems.extend(str(e).splitlines())
    vocab = tokenizer.vocab_size if tokenizer else manifest["tokenizer"]["vocab_size"] if manifest else None
    if vocab is not None and vocab != cfg.model.vocab_size and cfg.train.init_from:
        problems.append(
            f"data.tokenizer: {vocab} tokens, but the weights of train.init_from={cfg.train.init_from} have "
            f"a {cfg.model.vocab_size}-token vocabulary: build the shards with the model's own tokenizer "
            f"(`electra-dist shards build --tokenizer {cfg.train.init_from} ...`)"
        )
    elif vocab is not None and vocab != cfg.model.vocab_size:
        log.info(f"model.vocab_size {cfg.model.vocab_size} → {vocab} (the tokenizer's)")
        cfg.model.vocab_size = vocab
    if problems:
        raise ConfigError(problems)
    if tokenizer is not None:
        return tokenizer.special
    if manifest is not None:
        return SpecialIds(**manifest["tokenizer"]["special"])
    return SpecialIds()


def eval_urls(cfg) -> list[str]:
    """The held-out shards: data.eval_shards, else the eval split `shards build` wrote beside the training
    shards (listed in their manifest), else none; data.eval_shards=none turns evaluation off."""
    from pathlib import Path

    from electra_dist.data.loader import resolve_shards
    from electra_dist.data.shards import MANIFEST, read_manifest

    spec = cfg.data.eval_shards
    if spec == "none":
        return []
    if spec:
        return resolve_shards(spec)[0]
    d = Path(cfg.data.shards)
    if d.is_dir() and (d / MANIFEST).is_file():
        return [str(d / s["name"]) for s in read_manifest(d).get("eval_shards", [])]
    return []
