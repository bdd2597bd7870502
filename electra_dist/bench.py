"""Benchmarks: `electra-dist bench data` (loading + masking throughput)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from electra_dist.data.loader import LoaderSettings, PretrainLoader, resolve_shards
from electra_dist.data.masking import SpecialIds


@dataclass
class DataBench:
    workers: int
    batches: int
    seconds: float
    tokens: int  # non-pad tokens delivered
    positions: int  # batch × seq_len

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def per_worker(self) -> float:
        return self.tokens_per_second / max(1, self.workers)

    def line(self) -> str:
        return (f"workers={self.workers} batches={self.batches} {self.seconds:.2f}s "
                f"{self.tokens_per_second / 1e3:,.0f}k tokens/s ({self.per_worker / 1e3:,.0f}k per worker, "
                f"{self.tokens / max(1, self.positions):.1%} non-pad)")


def bench_data(shards: str, workers: int = 1, micro_batch: int = 64, batches: int = 200, warmup: int = 10,
               mask_prob: float = 0.15, shuffle_buffer: int = 1000, seed: int = 0) -> DataBench:
    urls, manifest = resolve_shards(shards)
    if manifest is None:
        raise ValueError(f"{shards}: bench data needs a shard directory with a manifest (for seq len and specials)")
    special = SpecialIds(**manifest["tokenizer"]["special"])
    settings = LoaderSettings(seq_len=manifest["seq_len"], micro_batch_size=micro_batch, special=special,
                              mask_prob=mask_prob, seed=seed, shuffle_buffer=shuffle_buffer)
    it = iter(PretrainLoader(urls, settings, num_workers=workers))
    for _ in range(warmup):
        next(it)
    tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        tokens += int(b["attention_mask"].sum())
    seconds = time.perf_counter() - start
    return DataBench(workers, batches, seconds, tokens, batches * micro_batch * manifest["seq_len"])
