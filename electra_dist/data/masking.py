"""Input masking, as the official ELECTRA (and, for the MLM baseline, BERT) does it.

Per sequence a FIXED count max(1, round(p · non-pad tokens)) of positions is chosen uniformly
among the maskable ones (never [CLS]/[SEP]/[PAD]); of those, `mask_fraction` are shown as
[MASK], `random_fraction` as a random token, the rest keep their token. ELECTRA: 0.85 / 0 / 0.15;
BERT: 0.8 / 0.1 / 0.1. Pure torch on CPU, vectorized, deterministic for a given generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from electra_dist import rng
from electra_dist.data.vocab import SpecialIds


@dataclass
class MaskedBatch:
    input_ids: torch.Tensor  # (B, S) what the generator sees
    original_ids: torch.Tensor  # (B, S)
    masked_positions: torch.Tensor  # (B, S) bool: where the loss is taken
    attention_mask: torch.Tensor  # (B, S) 1 for real tokens


def mask_tokens(
    input_ids: torch.Tensor,
    special: SpecialIds,
    mask_prob: float,
    mask_fraction: float = 0.85,
    random_fraction: float = 0.0,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    sample_ids: torch.Tensor | None = None,
) -> MaskedBatch:
    """Mask a (B, S) batch of token ids. `vocab_size` is needed only when random_fraction > 0.

    With `sample_ids` (B,) int64 the randomness is a pure function of (sample id, position),
    (see electra_dist.rng): a sample is masked the same way in any batch, on any rank.
    Otherwise `generator` (or torch's global RNG) is used.
    """
    ids = input_ids.long()
    B, S = ids.shape
    nonpad = ids != special.pad
    maskable = nonpad & (ids != special.cls) & (ids != special.sep)

    # Fixed count per row; torch.round rounds half to even, like tf.round in the official code.
    count = torch.round(nonpad.sum(1).double() * mask_prob).long().clamp(min=1)
    count = torch.minimum(count, maskable.sum(1))

    # Uniform choice without replacement: rank random scores, unmaskable ones last.
    if sample_ids is not None:
        pos = torch.arange(S)[None, :]
        sid = sample_ids.long()[:, None]

        def draw(stream: int) -> torch.Tensor:
            return rng.uniform(rng.row_keys(sid, pos, stream))
    else:

        def draw(stream: int) -> torch.Tensor:
            return torch.rand(B, S, generator=generator)

    scores = draw(rng.MASK_CHOICE).masked_fill(~maskable, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    positions = rank < count[:, None]

    action = draw(rng.MASK_ACTION)
    show_mask = positions & (action < mask_fraction)
    masked = ids.masked_fill(show_mask, special.mask)
    if random_fraction > 0:
        if vocab_size is None:
            raise ValueError("mask_tokens: random_fraction > 0 needs vocab_size")
        show_random = positions & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
        random_ids = (draw(rng.MASK_RANDOM_TOKEN) * vocab_size).long().clamp(max=vocab_size - 1)
        masked = torch.where(show_random, random_ids, masked)
    return MaskedBatch(masked, ids, positions, nonpad.long())


def max_predictions(seq_len: int, mask_prob: float) -> int:
    """Slots per sequence that always hold its masked positions: round(p · seq_len), at least 1 (the
    count `mask_tokens` draws is round(p · non-pad tokens) ≤ that). The official ELECTRA and NVIDIA's
    call it max_predictions_per_seq."""
    return max(1, int(torch.round(torch.tensor(seq_len * mask_prob, dtype=torch.float64))))
