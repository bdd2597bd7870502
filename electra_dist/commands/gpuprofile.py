"""gpu-check's last section: the profiler's top kernels of one training step of ELECTRA-Large (of the
engine the throughput section built, when it did; else one built here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from electra_dist.commands import training_deepspeed_json

if TYPE_CHECKING:
    from electra_dist.commands.gpucheck import Check


def profile(check: Check, result: dict, slice_s: float) -> None:
    if check.profiled is not None:
        result.update(check.profiled, source="the throughput section's engine (already compiled and warm)")
        return
    from electra_dist import parallel
    from electra_dist.commands.bench import _our_step, real_batches, sample_shards
    from electra_dist.config import Config

    flavor, seq, micro = ("debug", 128, 4) if check.quick else ("electra-large", 512, 32)
    cfg = Config.build(
        flavor,
        [
            f"train.seq_len={seq}",
            f"train.micro_batch_size={micro}",
            f"train.global_batch_size={micro}",
            f"train.precision={'bf16' if check.gpu else 'fp32'}",
        ],
    )
    layout = parallel.setup(1)
    try:
        step = _our_step(
            cfg,
            real_batches(sample_shards(seq), seq, micro, cfg.objective.mask_prob, 4),
            1,
            layout,
            training_deepspeed_json()[0],
        )
        for _ in range(2):
            step()
        profile_step(check, step, flavor)
    finally:
        parallel.destroy()
    result.update(check.profiled, source="an engine built for it")


def profile_step(check: Check, step: Callable[[], None], flavor: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if check.gpu else [])
    with profile(activities=activities) as prof:
        step()
        if check.gpu:
            torch.cuda.synchronize()
    attr = "self_device_time_total" if check.gpu else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr, 0), reverse=True)[:15]
    check.profiled = {
        "flavor": flavor,
        "top": [{"name": e.key[:90], "calls": e.count, "ms": round(getattr(e, attr, 0) / 1e3, 3)} for e in events],
    }
