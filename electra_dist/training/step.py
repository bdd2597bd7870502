"""One optimizer step: its micro-batches, one host-side collective for the global counts, then
forward/backward/step — with no host↔device synchronization of its own.

The losses are sums divided by the GLOBAL batch's masked / non-pad token counts ÷ (DP size ×
micro-steps), so averaging over ranks and micro-steps gives exactly the loss of the whole global
batch, however it is split (TP ≡ DP ≡ accumulation, tested). The counts are taken from the CPU
batches the loader made and travel, with every rank's stop flag, in one all-reduce over a gloo
group, so all ranks stop before the same step and nothing waits for the GPU. Each micro-batch is
copied to the device just before its forward. Whether the step's loss and gradient norm were
finite is kept ON the device (`StepResult.nonfinite`); the metrics logger reads it with the rest
of the window, at log steps and before any checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from electra_dist import parallel
from electra_dist.data.batch import Batch


class NonFiniteError(RuntimeError):
    pass


class LoaderWorkerDied(RuntimeError):
    """A data-loader worker process ended while training, not as part of a stop."""


@dataclass
class Stopped:
    """No step was trained: a rank was asked to stop. `fetched`: micro-batches taken from the loader
    (to hand out again after the resume)."""

    fetched: int


@dataclass
class StepResult:
    sums: dict[str, torch.Tensor]  # on device: losses summed over micro-batches, counts for the metrics
    tokens: float  # non-pad tokens of the global batch
    nonfinite: torch.Tensor  # on device: > 0 when this rank's loss or gradient norm was not finite
    keys: list[str] = field(default_factory=list)
    grad_norm: torch.Tensor | float | None = None  # before clipping; on device where we computed it


def loader_worker_died(e: Exception) -> str:
    return (
        f"a data-loader worker died: {str(e).splitlines()[0].strip()} The newest complete checkpoint is kept; "
        "resume with the same command (if it was killed for memory, lower data.num_workers or data.shuffle_buffer)"
    )


def fetch(batches: Iterator[Batch], n: int, stop: Callable[[], bool]) -> tuple[list[Batch], bool]:
    """Up to `n` micro-batches; (what was fetched, False) when a loader worker died during a stop request
    (SIGTERM to the whole job step: part of the stop, not a crash)."""
    micro: list[Batch] = []
    try:
        for _ in range(n):
            micro.append(next(batches))
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        if not stop():
            raise LoaderWorkerDied(loader_worker_died(e)) from None
        return micro, False
    return micro, True


def grad_norm_flags(precision: str, zero_stage: int) -> dict[str, bool]:
    """train_step's grad-norm arguments for a run: fp16 lets the loss scaler skip overflows instead of checking;
    ZeRO-0 in fp32 (a torch optimizer, no DeepSpeed norm) measures the norm itself."""
    return {"check_grad_norm": precision != "fp16", "own_grad_norm": zero_stage == 0 and precision == "fp32"}


def train_step(run, batches: Iterator[Batch], stop: Callable[[], bool] | bool = False) -> StepResult | Stopped:
    """One optimizer step of a training run (`training.build.Run`): its engine, accumulation, device and
    gradient-norm mode, its sampling temperature at this step; `Stopped` (nothing trained) when any rank was
    asked to stop."""
    run.model.temperature.fill_(run.temperature(run.scheduler.last_epoch + 1))  # the step about to run
    return engine_step(run.engine, batches, run.grad_accum, run.layout.device, stop, **run.grad_norm_mode)


def engine_step(
    engine,
    batches: Iterator[Batch],
    grad_accum: int,
    device: torch.device,
    stop: Callable[[], bool] | bool = False,
    check_grad_norm: bool = True,
    own_grad_norm: bool = False,
) -> StepResult | Stopped:
    """All micro-batches of one optimizer step of `engine`; `Stopped` (nothing trained) when any rank was
    asked to stop. `own_grad_norm`: measure the gradient norm here (after the last backward, before the
    step) where DeepSpeed keeps none (ZeRO-0, torch optimizer, fp32)."""
    asked = stop if callable(stop) else (lambda: bool(stop))
    micro, whole = fetch(batches, grad_accum, asked)
    tokens, masked, stopping = parallel.global_counts(
        sum(b.tokens for b in micro), sum(b.masked for b in micro), not whole or asked()
    )
    if stopping:
        return Stopped(len(micro))
    n = parallel.MPU().get_data_parallel_world_size() * grad_accum
    # tensors, not floats: a float would be a constant of a compiled graph, recompiled every step
    host = torch.tensor([masked / n, tokens / n], dtype=torch.float32)
    masked_normalizer, token_normalizer = (
        (host.pin_memory() if device.type == "cuda" else host).to(device, non_blocking=True).unbind()
    )
    sums: dict[str, torch.Tensor] = {}
    norm = None
    for i, b in enumerate(micro):
        if b.dropout_seed is not None:  # the same dropout wherever (which rank, which micro-step) this slice runs
            torch.manual_seed(b.dropout_seed)
        out = engine(b.to(device), masked_normalizer=masked_normalizer, token_normalizer=token_normalizer)
        engine.backward(out.loss)
        if own_grad_norm and i == len(micro) - 1:  # gradients are reduced over DP by now, not yet clipped
            norm = parallel.grad_norm(engine.module)
        engine.step()
        for k, v in (
            ("loss", out.loss),
            ("generator_loss", out.generator_loss),
            ("discriminator_loss", out.discriminator_loss),
            *out.stats.items(),
        ):
            sums[k] = sums.get(k, 0) + v.detach().float()
    nonfinite = (~torch.isfinite(sums["loss"])).float()
    if norm is None:
        norm = engine.get_global_grad_norm()
    if check_grad_norm and isinstance(norm, torch.Tensor):
        nonfinite = nonfinite + (~torch.isfinite(norm.detach().float())).float().to(nonfinite.device)
    elif check_grad_norm and norm is not None and not math.isfinite(float(norm)):  # DeepSpeed read it back
        nonfinite = nonfinite + 1.0
    return StepResult(sums, tokens, nonfinite, [k for b in micro for k in b.keys], norm)


def rtd_ratios(s: dict[str, float]) -> dict[str, float]:
    """The accuracy-type numbers of replaced-token detection from summed counts (over steps or held-out
    batches, all ranks): the generator's accuracy at the masked positions, and the discriminator's
    accuracy, precision and recall over the non-pad tokens, and the share of them that was replaced."""
    return {
        "generator_accuracy": s["generator_correct"] / max(1.0, s["masked"]),
        "discriminator_accuracy": s["discriminator_correct"] / max(1.0, s["tokens"]),
        "discriminator_precision": s["true_positive"] / max(1.0, s["predicted_positive"]),
        "discriminator_recall": s["true_positive"] / max(1.0, s["replaced"]),
        "replaced_fraction": s["replaced"] / max(1.0, s["tokens"]),
    }
