"""The optimizer and LR schedule of the official ELECTRA recipe, shared by pre-training, fine-tuning
and `bench train`: AdamW (β 0.9/0.999, ε 1e-6) without weight decay on LayerNorm and biases,
LR = linear decay to 0 × min(1, step / warm-up)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from electra_dist import parallel
from electra_dist.config import ConfigError, OptimConfig

log = logging.getLogger(__name__)


def lr_multiplier(step: int, warmup: int, total: int) -> float:
    """The official ELECTRA schedule: linear decay to 0 over `total`, times min(1, step / warmup)."""
    decay = max(0.0, 1.0 - step / max(1, total))
    return decay * (min(1.0, step / warmup) if warmup > 0 else 1.0)


class Schedule:
    """The LR multiplier of a run: `lr_multiplier`, or — after train.max_steps changed on a resume past
    warm-up — a straight line from the multiplier the run had at step `start` down to 0 at `total`
    (no jump back up to where a longer schedule would have been)."""

    def __init__(self, warmup: int, total: int, start: tuple[int, float] | None = None):
        self.warmup, self.total, self.start = warmup, total, start

    def __call__(self, step: int) -> float:
        if self.start is None:
            return lr_multiplier(step, self.warmup, self.total)
        s0, m0 = self.start
        return m0 * max(0.0, self.total - step) / max(1, self.total - s0)

    def state(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "total": self.total, "start": list(self.start) if self.start else None}

    def extended(self, step: int, total: int) -> Schedule:
        """This schedule, continued from `step` to a new `total` (see the class)."""
        if total == self.total:
            return self
        if step < self.warmup and self.start is None:
            return Schedule(self.warmup, total)  # still warming up: the new schedule's ramp is the same
        return Schedule(self.warmup, total, (step, self(step)))


def lr_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`Schedule` as a scheduler: every group's LR is its own base LR × the multiplier."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(warmup, total))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on matrices and embeddings; none on LayerNorm parameters and biases (all 1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict[str, Any]], o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over `groups` (optim.implementation): torch's, fused on GPU; or DeepSpeed's FusedAdam on GPU,
    torch's fused AdamW when that op cannot be had (said once per process)."""
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if device.type != "cuda":
        return torch.optim.AdamW(groups, **kw)
    if o.implementation == "deepspeed":
        try:
            return parallel.fused_adam(groups, **kw)
        except RuntimeError as e:
            _say_once(f"DeepSpeed FusedAdam unavailable: {e}; using torch AdamW(fused=True)")
    return torch.optim.AdamW(groups, fused=True, **kw)


_said: set[str] = set()


def _say_once(line: str) -> None:
    if line not in _said:
        _said.add(line)
        log.info(line)


def continue_schedule(run, state, saved: dict[str, Any], where: Path) -> None:
    """On resume (`run`: training.build.Run, `state`: its TrainState), the checkpoint's LR schedule
    continued to this run's train.max_steps (see Schedule); a changed max_steps is recorded in the state."""
    t = run.cfg.train
    old = saved.get("schedule") or {
        "warmup": run.cfg.optim.warmup_steps,
        "total": (saved.get("config") or {}).get("train", {}).get("max_steps", t.max_steps),
    }
    before = Schedule(old["warmup"], old["total"], tuple(old["start"]) if old.get("start") else None)
    after = before.extended(state.step, t.max_steps)
    if after is before:
        run.scheduler.lr_lambdas = [before] * len(run.scheduler.lr_lambdas)
        return
    if before(state.step) == 0.0 and after.start is not None:
        raise ConfigError(
            [
                f"--resume: {where} finished its LR schedule at step {state.step} (train.max_steps="
                f"{before.total}; the LR is 0): training on would change nothing. Start a new run from "
                f"its weights instead, or resume with train.max_steps={before.total}"
            ]
        )
    run.scheduler.lr_lambdas = [after] * len(run.scheduler.lr_lambdas)
    state.changed["train.max_steps"] = f"{before.total} -> {t.max_steps} at step {state.step}"
    log.info(
        f"train.max_steps {before.total} → {t.max_steps}: the LR multiplier goes on from "
        f"{after(state.step):.4f} at step {state.step} linearly to 0 at step {t.max_steps}"
    )


def temperature_at(step: int, total: int, start: float, end: float, shape: str) -> float:
    """The Gumbel sampling temperature of optimizer step `step` (1-based) of `total`: `start` at step 1,
    `end` at the last step, between them linear, cosine (slow at both ends) or exponential (a constant ratio
    per step); `constant`: `end` throughout."""
    if shape == "constant" or total <= 1:
        return end
    p = min(1.0, max(0.0, (step - 1) / (total - 1)))
    if shape == "linear":
        return start + (end - start) * p
    if shape == "cosine":
        return end + (start - end) * (1 + math.cos(math.pi * p)) / 2
    if shape == "exponential":
        return start * (end / start) ** p
    raise ValueError(f"objective.temperature_schedule: {shape!r} is not constant, linear, cosine or exponential")
