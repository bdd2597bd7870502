"""The generator's vocabulary tail: from its logits at the masked slots to the MLM loss, its argmax
predictions and the Gumbel-max replacements the discriminator sees.

Step by step (any TP size, vocab-parallel under TP), or — `kernels.apply(model, vocab_tail=True)`, TP=1,
counter-based noise — as one compiled function (kernels.vocab_tail) that never writes an fp32 copy of
the (slots × vocabulary) logits and computes the noise's row keys inside. tests/test_kernels.py holds
both to the same numbers.
"""

from __future__ import annotations

import torch

from electra_dist import rng


def gumbel_scores(
    logits: torch.Tensor, keys: torch.Tensor, lo: int, hi: int, temperature: torch.Tensor | float
) -> torch.Tensor:
    """logits / T + counter-based Gumbel noise for vocab columns [lo, hi): the plain path of
    the fused kernel (kernels.fused_gumbel_scores), which gives the same numbers."""
    u = rng.uniform(keys, torch.arange(lo, hi, device=logits.device))
    return logits.float() / temperature - torch.log(-torch.log(u + 1e-9) + 1e-9)


def generator_tail(
    model,
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
):
    """(weighted MLM loss sum, argmax predictions, replacements at the filled slots — None for the MLM
    objective) of `model` (an ElectraPretrainer). `rows`: each slot's sample id, `positions` its position:
    the keys of its counter-based noise."""
    if model.vocab_tail_fn is not None and model.discriminator is not None and model.factory.tp_size == 1:
        ce, predicted, sampled = model.vocab_tail_fn(logits, targets, rows, positions, model.temperature, rng.GUMBEL)
        return (ce * weights).sum(), predicted, torch.where(weights > 0, sampled, targets)
    gen_sum = (model.factory.vocab_cross_entropy(logits, targets) * weights).sum()
    with torch.no_grad():
        predicted = model.factory.vocab_argmax(logits.float())
        if model.discriminator is None:
            return gen_sum, predicted, None
        keys = rng.row_keys(rows, positions, rng.GUMBEL)  # every slot, static shapes; empty slots keep the target
        return gen_sum, predicted, torch.where(weights > 0, model.gumbel_sample(logits, keys), targets)
