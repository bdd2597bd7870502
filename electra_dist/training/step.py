"""One optimizer step: its micro-batches, one collective for the global counts, forward/backward/step.

The losses are sums divided by the GLOBAL batch's masked / non-pad token counts ÷ (DP size ×
micro-steps), so averaging over ranks and micro-steps gives exactly the loss of the whole global
batch, however it is split (TP ≡ DP ≡ accumulation, tested). The counts travel in the same
all-reduce as every rank's stop flag, so all ranks stop before the same step.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from electra_dist import parallel


class NonFiniteError(RuntimeError):
    pass


@dataclass
class Batch:
    """One micro-batch on its way to the model; `keys` name the samples for error messages."""

    tensors: dict[str, torch.Tensor]
    keys: list[str]
    tokens: float  # non-pad tokens, counted on the CPU before the copy (no device sync)
    masked: float


@dataclass
class StepResult:
    sums: dict[str, torch.Tensor]  # on device: losses summed over micro-batches, counts for the metrics
    tokens: float  # non-pad tokens of the global batch
    keys: list[str] = field(default_factory=list)


def next_batch(batches: Iterator[dict[str, Any]], device: torch.device) -> Batch:
    b = dict(next(batches))
    keys = b.pop("keys", [])
    b.pop("epoch", None)
    return Batch({k: v.to(device, non_blocking=True) for k, v in b.items()}, keys,
                 float(b["attention_mask"].sum()), float(b["masked_positions"].sum()))


def train_step(engine, batches: Iterator[dict[str, Any]], grad_accum: int, device: torch.device,
               stop: bool = False) -> StepResult | None:
    """All micro-batches of one optimizer step; None (nothing trained) when any rank was asked to stop."""
    micro = [next_batch(batches, device) for _ in range(grad_accum)]
    tokens, masked, stopping = parallel.global_counts(sum(b.tokens for b in micro), sum(b.masked for b in micro),
                                                      stop, device)
    if stopping:
        return None
    n = parallel.MPU().get_data_parallel_world_size() * grad_accum
    sums: dict[str, torch.Tensor] = {}
    for b in micro:
        out = engine(**b.tensors, masked_normalizer=masked / n, token_normalizer=tokens / n)
        engine.backward(out.loss)
        engine.step()
        for k, v in (("loss", out.loss), ("generator_loss", out.generator_loss),
                     ("discriminator_loss", out.discriminator_loss), *out.stats.items()):
            sums[k] = sums.get(k, 0) + v.detach().float()
    return StepResult(sums, tokens, [k for b in micro for k in b.keys])


def check_finite(result: StepResult, engine, step: int, rank: int, device: torch.device, fp16: bool) -> None:
    """Stop every rank when any rank's loss or gradient norm is not finite, naming the step, the rank
    and the batch's samples. (fp16: DeepSpeed's loss scaler skips overflowing steps itself.)"""
    loss = result.sums["loss"]
    norm = engine.get_global_grad_norm()
    mine = not math.isfinite(float(loss)) or (norm is not None and not math.isfinite(float(norm)) and not fp16)
    if not parallel.any_rank(mine, device):
        return
    keys = result.keys
    where = (f"on rank {rank} (loss {float(loss)}, grad norm {norm}); the batch held samples "
             f"{', '.join(keys[:16])}{' …' if len(keys) > 16 else ''}") if mine else \
        f"on another rank (rank {rank} was finite)"
    msg = f"non-finite loss or gradients at step {step} {where}"
    print(f"electra-dist: error: {msg}", file=sys.stderr, flush=True)
    raise NonFiniteError(msg)
