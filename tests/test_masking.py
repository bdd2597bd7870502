"""Masking exactly as the official ELECTRA: fixed count, never specials, 85/15, seeded."""

import torch

from electra_dist.data.masking import mask_tokens
from electra_dist.data.vocab import SpecialIds

SP = SpecialIds()


def _batch(B=64, S=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (B, S), generator=g)
    lengths = torch.randint(8, S + 1, (B,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0] = SP.cls
        ids[i, n // 2] = SP.sep
        ids[i, n - 1] = SP.sep
        ids[i, n:] = SP.pad
    return ids


def test_exact_count_and_never_special():
    ids = _batch()
    for p in (0.15, 0.25):
        out = mask_tokens(ids, SP, p, generator=torch.Generator().manual_seed(1))
        nonpad = (ids != SP.pad).sum(1)
        expected = torch.round(nonpad.double() * p).long().clamp(min=1)
        assert torch.equal(out.masked_positions.sum(1), expected)
        special = (ids == SP.cls) | (ids == SP.sep) | (ids == SP.pad)
        assert not (out.masked_positions & special).any()
        assert torch.equal(out.original_ids, ids)
        # outside the masked positions nothing changes
        assert torch.equal(out.input_ids[~out.masked_positions], ids[~out.masked_positions])
        assert torch.equal(out.attention_mask, (ids != SP.pad).long())


def test_at_least_one_mask_even_for_short_rows():
    ids = torch.tensor([[SP.cls, 7, SP.sep, SP.pad, SP.pad]])
    out = mask_tokens(ids, SP, 0.15, generator=torch.Generator().manual_seed(0))
    assert out.masked_positions.tolist() == [[False, True, False, False, False]]


def test_85_15_split_within_statistical_tolerance():
    ids = _batch(B=512, S=128)
    out = mask_tokens(ids, SP, 0.15, generator=torch.Generator().manual_seed(3))
    masked = out.masked_positions
    n = int(masked.sum())
    shown_mask = int((out.input_ids[masked] == SP.mask).sum())
    kept = int((out.input_ids[masked] == ids[masked]).sum())
    assert shown_mask + kept == n  # ELECTRA never substitutes a random token
    frac = shown_mask / n
    sigma = (0.85 * 0.15 / n) ** 0.5
    assert abs(frac - 0.85) < 5 * sigma, (frac, n)


def test_bert_80_10_10():
    ids = _batch(B=512, S=128)
    out = mask_tokens(
        ids,
        SP,
        0.15,
        mask_fraction=0.8,
        random_fraction=0.1,
        vocab_size=1000,
        generator=torch.Generator().manual_seed(4),
    )
    m = out.masked_positions
    n = int(m.sum())
    as_mask = (out.input_ids[m] == SP.mask).float().mean().item()
    same = (out.input_ids[m] == ids[m]).float().mean().item()
    assert abs(as_mask - 0.8) < 5 * (0.16 / n) ** 0.5
    assert abs(same - 0.1) < 0.02  # 10 % kept (+ ~0.1 % random draws of the same token)


def test_deterministic_for_a_seed():
    ids = _batch()
    a = mask_tokens(ids, SP, 0.15, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, SP, 0.15, generator=torch.Generator().manual_seed(7))
    c = mask_tokens(ids, SP, 0.15, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.masked_positions, b.masked_positions)
    assert not torch.equal(a.masked_positions, c.masked_positions)


def test_uniform_over_positions():
    # every maskable position is chosen about equally often
    ids = torch.full((4000, 20), 9)
    ids[:, 0], ids[:, -1] = SP.cls, SP.sep
    out = mask_tokens(ids, SP, 0.15, generator=torch.Generator().manual_seed(5))
    per_pos = out.masked_positions[:, 1:-1].float().mean(0)
    assert per_pos.max() - per_pos.min() < 0.04
    assert out.masked_positions[:, 0].sum() == 0 and out.masked_positions[:, -1].sum() == 0
