"""One metrics logger: sums on device over a window of steps, read back to the host only at log
steps, then written to OUTPUT/metrics.jsonl (the durable record), the tracker (MLflow on global
rank 0) and one console line. It also holds each step's on-device "was it finite" flag: read at
log steps and before every checkpoint (`check_finite`), so a poisoned state is never saved.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import torch

from electra_dist import parallel
from electra_dist.errors import writing
from electra_dist.logs import PLAIN
from electra_dist.rundir import OutputDir
from electra_dist.tracking import Tracker, make_tracker
from electra_dist.tracking.lifecycle import finish_record, start_record
from electra_dist.training.build import Run
from electra_dist.training.checkpoints import TrainState
from electra_dist.training.step import NonFiniteError, StepResult, rtd_ratios

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, run: Run, state: TrainState, tracker: Tracker | None = None):
        self.run = run
        self.out = OutputDir(run.cfg.output_dir)
        self.file = self.out.metrics
        run_id = state.run_id or (self._run_id_on_disk() if state.resumed_from else None)
        self.tracker = tracker or make_tracker(run.cfg, run.layout.is_main, self.file, run_id=run_id)
        state.run_id = self.tracker.run_id
        self.pace: list[float] = []  # seconds per step of each window, evaluation left out: the ETA's
        self._reset()
        if run.layout.is_main:
            self._start(state)

    def _reset(self) -> None:
        self.window: dict[str, torch.Tensor] = {}
        self.tokens, self.steps, self.t0 = 0.0, 0, time.perf_counter()
        self.flags: list[torch.Tensor] = []  # per step of the window, on device
        self.checked = 0  # flags already read back (at a checkpoint inside the window)
        self.grad_norm: torch.Tensor | float | None = None
        self.step_keys: list[tuple[int, list[str]]] = []  # (step, this rank's samples)

    def add(self, result: StepResult, step: int) -> None:
        """Accumulate one step's sums and finiteness flag (device tensors: no host sync)."""
        for k, v in result.sums.items():
            self.window[k] = self.window.get(k, 0) + v
        self.tokens += result.tokens
        self.steps += 1
        self.flags.append(result.nonfinite)
        self.step_keys.append((step, result.keys))
        self.grad_norm = result.grad_norm  # the window's last step's (read at the log step)

    def _pace(self, seconds: float) -> float:
        """Seconds per step for the ETA: the median of the last windows after the first (compilation and
        warm-up), so one slow window (a checkpoint, a busy node) does not swing it."""
        self.pace.append(seconds / max(1, self.steps))
        recent = sorted(self.pace[1:][-9:] or self.pace)
        return recent[len(recent) // 2]

    def check_finite(self) -> None:
        """Raise NonFiniteError on every rank if any rank had a non-finite loss or gradient norm in
        the steps not yet checked, naming the steps and, on the rank that saw it, the samples."""
        run, start = self.run, self.checked
        bad_steps = []
        if len(self.flags) > start:
            flags = torch.stack(self.flags[start:]).tolist()  # the one read-back
            bad_steps = [(step, keys) for (step, keys), f in zip(self.step_keys[start:], flags) if f > 0]
            self.checked = len(self.flags)
        if not parallel.any_rank(bool(bad_steps)):
            return
        first, last = self.step_keys[0][0], self.step_keys[-1][0]
        if bad_steps:
            step, keys = bad_steps[0]
            where = (
                f"first at step {step} on rank {run.layout.rank} (steps {[s for s, _ in bad_steps]} of the "
                f"window {first}-{last}); that step's batch held samples {', '.join(keys[:16])}"
                f"{' …' if len(keys) > 16 else ''}"
            )
        else:
            where = f"in the window of steps {first}-{last} on another rank (rank {run.layout.rank} was finite)"
        msg = f"non-finite loss or gradients {where}; no checkpoint was written from this state"
        print(f"electra-dist: error: {msg}", file=sys.stderr, flush=True)
        raise NonFiniteError(msg)

    def maybe_log(self, state: TrainState, held_out: dict[str, float] | None = None) -> dict[str, float] | None:
        """A record at every train.log_interval-th step, the last, and wherever there was a held-out
        evaluation (`held_out`, logged with the window it ended); None at other steps."""
        t = self.run.cfg.train
        if held_out is None and state.step % t.log_interval and state.step != t.max_steps:
            return None
        return self.log(state, held_out)

    def log(self, state: TrainState, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Check finiteness, read the window back (one DP all-reduce), write the record (with `extra`,
        the held-out evaluation when there was one) everywhere, start a new window."""
        self.check_finite()
        run, seconds = self.run, time.perf_counter() - self.t0
        keys = sorted(self.window)
        vec = torch.stack(
            [torch.as_tensor(self.window[k], dtype=torch.float64, device=run.layout.device) for k in keys]
        )
        s = dict(zip(keys, parallel.data_parallel_sum(vec).tolist()))
        if run.cfg.train.precision == "fp16":  # DeepSpeed's loss scaler skips overflowing steps; count them
            state.skipped_steps = int(getattr(run.engine, "skipped_steps", 0))
        micro_total = self.steps * run.grad_accum * run.layout.dp_size
        tflops = self.tokens * run.flops_per_token / seconds / 1e12 / run.layout.world
        r = rtd_ratios(s)
        m = {
            "loss/total": s["loss"] / micro_total,
            "loss/generator": s["generator_loss"] / micro_total,
            "loss/discriminator": s["discriminator_loss"] / micro_total,
            "acc/generator": r["generator_accuracy"],
            "acc/discriminator": r["discriminator_accuracy"],
            "discriminator/precision": r["discriminator_precision"],
            "discriminator/recall": r["discriminator_recall"],
            "discriminator/replaced_fraction": r["replaced_fraction"],
            "optim/lr": float(run.scheduler.get_last_lr()[0]),
            "optim/grad_norm": float(self.grad_norm if self.grad_norm is not None else float("nan")),
            "throughput/tokens_per_s": self.tokens / seconds,
            "throughput/tflops_per_device": tflops,
            "progress/tokens": float(state.tokens_seen),
            "progress/flops": state.flops_seen,
            "progress/skipped_steps": float(state.skipped_steps),
        }
        if run.peak_tflops:
            m["throughput/mfu"] = tflops / run.peak_tflops
        if run.cfg.objective.temperature_schedule != "constant":
            m["objective/temperature"] = float(run.model.temperature)  # this (the last) step's
        if run.cfg.objective.kind == "mlm":  # one encoder, no discriminator: no fake zero curves
            m = {k: v for k, v in m.items() if "discriminator" not in k}
        m.update(_memory(run.layout.device))
        m.update(extra or {})
        if run.layout.is_main:
            with writing(self.file), open(self.file, "a") as f:
                f.write(json.dumps({"step": state.step, "time": time.time(), **m}) + "\n")
            self.tracker.log_metrics(m, state.step)
            state.run_id = self.tracker.run_id
            pace = self._pace(seconds - m.get("eval/seconds", 0.0))
            log.info(_console_line(state.step, run.cfg.train.max_steps, pace, m), extra=PLAIN)
        self._reset()
        return m

    def _start(self, state: TrainState) -> None:
        run = self.run
        start_record(self.tracker, run.cfg, run.ds_config, run.layout, self.file, state.resumed_from, state.changed)
        if not run.peak_tflops:
            log.info(
                f"MFU not shown: no peak TFLOP/s known for {run.layout.device_name!r} in "
                f"{run.cfg.train.precision} (set ELECTRA_DIST_PEAK_TFLOPS to its dense peak)"
            )

    def _run_id_on_disk(self) -> str | None:
        f = self.out.tracking
        return json.loads(f.read_text()).get("run_id") if f.is_file() else None

    def close(self, status: str) -> None:
        """The run's record closed (curves, the HF export if asked), the tracker with `status`."""
        if self.run.layout.is_main:
            hf = self.out.hf_export if self.run.cfg.tracking.log_hf_export else None
            finish_record(self.tracker, self.file, status, hf)
        else:
            self.tracker.close(status)


def _memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"memory/max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    import psutil

    return {"memory/rss_gib": psutil.Process().memory_info().rss / 2**30}


def _console_line(step: int, max_steps: int, seconds_per_step: float, m: dict[str, float]) -> str:
    """One line per log step: progress and ETA, losses, accuracies, LR, speed (MFU "—" without a known peak)."""
    eta = _duration((max_steps - step) * seconds_per_step)
    mfu = f"mfu {m['throughput/mfu']:.1%}" if "throughput/mfu" in m else "mfu —"
    disc = (
        (f" disc {m['loss/discriminator']:.4f}", f" disc {m['acc/discriminator']:.3f}")
        if "loss/discriminator" in m
        else ("", "")
    )
    held_out = f" | eval loss {m['eval/loss']:.4f}" if "eval/loss" in m else ""
    return (
        f"step {step:>7}/{max_steps} ({step / max_steps:4.0%}, ETA {eta}) | loss {m['loss/total']:.4f} gen "
        f"{m['loss/generator']:.4f}{disc[0]} | acc gen {m['acc/generator']:.3f}{disc[1]} | lr {m['optim/lr']:.2e} | "
        f"{m['throughput/tokens_per_s']:,.0f} tok/s {mfu}{held_out}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
