"""Counter-based random numbers: noise as a pure function of (seed, sample, position, column).

Masking and Gumbel sampling draw from here instead of a stateful generator, so a sample gets
the same mask and the same generator sample whichever data-parallel rank, tensor-parallel
shard, micro-batch or worker handles it. That is what makes DP=2 ≡ DP=1 and TP=2 ≡ TP=1
exact, and a resumed run identical to an uninterrupted one. Plain int64 torch ops (a 32-bit
integer hash, "lowbias32"); torch.compile fuses them into one kernel.
"""

from __future__ import annotations

import hashlib

import torch

_M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Wellons) on int64 tensors holding uint32 values; wraps like uint32."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def combine(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """A new 32-bit key from two (order matters)."""
    return hash32(hash32(a) ^ ((b * 0x9E3779B9) & _M32))


# independent random streams
MASK_CHOICE, MASK_ACTION, MASK_RANDOM_TOKEN, GUMBEL = 1, 2, 3, 4


def row_keys(sample_ids: torch.Tensor, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """One 32-bit key per (sample, position), for the named random stream."""
    lo, hi = sample_ids & _M32, (sample_ids >> 32) & _M32
    return combine(combine(combine(lo, hi), positions), stream)


def uniform(keys: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """U(0, 1) float32 per key, or per (key, column) as keys[:, None] × columns[None, :].

    The (key, column) grid is the hot path (masked positions × vocabulary): rows and columns are
    hashed once each, and only one xor and one mixing round touch the whole grid.
    """
    if columns is None:
        x = keys
    else:
        x = hash32(keys)[:, None] ^ hash32((columns * 0x9E3779B9) & _M32)[None, :]
        x = (x * 0x7FEB352D) & _M32
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & _M32
        x = x ^ (x >> 16)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def sample_id(key: str, epoch: int, seed: int) -> int:
    """A stable 62-bit id for one sample in one epoch under one seed."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


def dropout_seed(seed: int, step: int, slice_index: int) -> int:
    """The torch seed for the dropout of slice `slice_index` of the global batch of `step`: the same
    wherever (which DP rank, which micro-step) that slice runs."""
    return int(combine(combine(torch.tensor(seed), step), slice_index)) * 0x9E3779B1 % (1 << 62)
