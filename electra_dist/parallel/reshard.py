"""Resume a checkpoint on another layout: another data-parallel size, tensor-parallel size or ZeRO stage (0-2).

Adam is elementwise, so the FULL tensor of every parameter — fp32 weight, exp_avg, exp_avg_sq — plus the
step count is a layout-free form of the training state. `load_full_state` reads it out of the DeepSpeed
files of the layout that wrote them: ZeRO-1/2's flat fp32 partitions (and their Adam moments), joined over
the old DP ranks and cut at the `param_shapes` DeepSpeed records; ZeRO-0's torch optimizer state by
parameter order; tensor-parallel shards concatenated along their split dimension. `install` slices it for
this rank and puts it into the live engine: module weights, this rank's ZeRO partition or the torch
optimizer's state, the LR schedule and the engine's counters. Every rank reads the whole state once
(host memory ≈ 12 bytes × parameters while it resumes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from electra_dist.model.electra import fit_vocab_rows
from electra_dist.parallel.engine import load_checkpoint_file, zero_stage
from electra_dist.parallel.tensor import _partition_dim, full_shape, local_slice

_MODEL = "mp_rank_{tp:02d}_model_states.pt"
_OPTIM = "zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt"


@dataclass(frozen=True)
class SavedLayout:
    tp: int
    dp: int
    zero: int

    def __str__(self) -> str:
        return f"TP {self.tp} × DP {self.dp}, ZeRO-{self.zero}"


@dataclass
class FullState:
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    step: Any = None  # as the optimizer keeps it (a tensor for torch's AdamW)
    model_file: dict[str, Any] = field(default_factory=dict)  # TP rank 0's model states: client state, schedule


def saved_layout(path: Path) -> SavedLayout:
    """The layout that wrote the checkpoint at `path`, from its file names and DeepSpeed's own record."""
    if any(re.fullmatch(r"zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt", f.name) for f in path.iterdir()):
        return _zero3_layout(path)
    tps = sorted(
        int(m.group(1)) for f in path.iterdir() if (m := re.fullmatch(r"mp_rank_(\d+)_model_states\.pt", f.name))
    )
    if not tps or tps != list(range(len(tps))):
        raise FileNotFoundError(f"{path}: no complete set of mp_rank_*_model_states.pt files")
    first = load_checkpoint_file(path / _MODEL.format(tp=0), map_location="cpu")
    return SavedLayout(len(tps), int(first["dp_world_size"]), zero_stage(first.get("ds_config") or {}))


def _zero3_layout(path: Path) -> SavedLayout:
    first = load_checkpoint_file(path / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu")
    return SavedLayout(1, int(first["dp_world_size"]), 3)


def current_layout(engine) -> SavedLayout:
    from electra_dist.parallel.launch import MPU

    mpu = MPU()
    return SavedLayout(
        mpu.get_model_parallel_world_size(), mpu.get_data_parallel_world_size(), int(engine.zero_optimization_stage())
    )


def full_shapes(model: nn.Module, tp: int) -> dict[str, tuple[torch.Size, int | None]]:
    """name → (full TP=1 shape, split dim on this layout or None)."""
    return {name: (full_shape(p, tp), _partition_dim(p)) for name, p in model.named_parameters()}


def load_full_state(
    path: Path,
    saved: SavedLayout,
    shapes: dict[str, tuple[torch.Size, int | None]],
    group_names: list[list[str]] | None,
) -> FullState:
    """The full per-parameter state of the checkpoint at `path`, written by `saved`. `group_names`: the
    parameter names of each optimizer group in order (what a ZeRO-0 state's indices refer to); None:
    the weights only (fp32 masters where ZeRO keeps them), for export."""
    per_tp = []
    for t in range(saved.tp):
        model_file = load_checkpoint_file(path / _MODEL.format(tp=t), map_location="cpu")
        w = {k: v.float() for k, v in model_file["module"].items() if isinstance(v, torch.Tensor)}
        if saved.zero:
            m, v, step = _zero12_moments(path, saved, t, model_file["param_shapes"], w)
        else:
            m, v, step = (
                _zero0_moments(model_file["optimizer"], group_names) if group_names is not None else ({}, {}, None)
            )
        per_tp.append((w, m, v, step, model_file))
    full = FullState(step=per_tp[0][3], model_file=per_tp[0][4])
    for name, (shape, _) in shapes.items():
        for i, target in enumerate((full.weights, full.exp_avg, full.exp_avg_sq)):
            if i == 0 or group_names is not None:
                target[name] = _join([state[i][name] for state in per_tp], shape, name)
    return full


def checkpoint_weights(path: Path, shapes: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full fp32 weights (TP=1 names and `shapes`) of the training checkpoint at `path`, whatever layout
    wrote it, and its client state (step, config, ...)."""
    zero3 = path / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    if zero3.is_file():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
        return {k: v.float() for k, v in weights.items()}, load_checkpoint_file(zero3, map_location="cpu")
    full = load_full_state(path, saved_layout(path), {k: (s, None) for k, s in shapes.items()}, None)
    return full.weights, full.model_file


def _join(parts: list[torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
    if parts[0].shape == shape:
        return parts[0]  # replicated over TP ranks
    part = parts[0].shape
    dims = [
        d
        for d in range(len(shape))
        if len(parts) > 1
        and part[d] * len(parts) == shape[d]
        and part[:d] + part[d + 1 :] == shape[:d] + shape[d + 1 :]
    ]
    if dims:
        return torch.cat(parts, dim=dims[0])
    # the vocabulary is padded to a multiple of pad_vocab_multiple × TP size, so its row count changes with
    # the TP size; rows past the vocabulary are masked out of every softmax and never looked up
    joined = torch.cat(parts) if len(parts) > 1 and parts[0].shape[1:] == shape[1:] else parts[0]
    if joined.shape[1:] != shape[1:]:
        raise ValueError(f"{name}: checkpoint shards {tuple(parts[0].shape)} × {len(parts)} do not make {tuple(shape)}")
    return fit_vocab_rows(joined, shape)


def _zero0_moments(optimizer_state: dict[str, Any], group_names: list[list[str]]):
    m, v, step = {}, {}, None
    for group, names in zip(optimizer_state["param_groups"], group_names):
        for index, name in zip(group["params"], names):
            s = optimizer_state["state"][index]
            m[name], v[name], step = s["exp_avg"].float(), s["exp_avg_sq"].float(), s["step"]
    return m, v, step


def _zero12_moments(
    path: Path, saved: SavedLayout, t: int, param_shapes: list[dict[str, torch.Size]], weights: dict[str, torch.Tensor]
):
    files = [
        load_checkpoint_file(path / _OPTIM.format(dp=d, tp=t), map_location="cpu")["optimizer_state_dict"]
        for d in range(saved.dp)
    ]
    m, v, step = {}, {}, None
    for g, names in enumerate(param_shapes):
        fp32 = torch.cat([f["single_partition_of_fp32_groups"][g].float() for f in files])
        states = [f["base_optimizer_state"]["state"][g] for f in files]
        flat_m = torch.cat([s["exp_avg"].float() for s in states])
        flat_v = torch.cat([s["exp_avg_sq"].float() for s in states])
        step = states[0]["step"]
        offset = 0
        for name, shape in names.items():
            n = int(torch.Size(shape).numel())
            weights[name] = fp32[offset : offset + n].view(shape).clone()  # the fp32 master, not the module copy
            m[name], v[name] = (
                flat_m[offset : offset + n].view(shape).clone(),
                flat_v[offset : offset + n].view(shape).clone(),
            )
            offset += n
    return m, v, step


def install(engine, full: FullState, shapes: dict[str, tuple[torch.Size, int | None]]) -> dict[str, Any]:
    """Put `full` into this rank's engine (weights, optimizer partition/state, schedule, counters); returns the
    checkpoint's client state."""
    from electra_dist.parallel.launch import MPU

    mpu = MPU()
    tp, tp_rank = mpu.get_model_parallel_world_size(), mpu.get_model_parallel_rank()
    model = engine.module
    names = {id(p): n for n, p in model.named_parameters()}
    local = {
        n: tuple(local_slice(t[n], shapes[n][1], tp, tp_rank) for t in (full.weights, full.exp_avg, full.exp_avg_sq))
        for n in shapes
    }
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(local[name][0])
    if engine.zero_optimization_stage() == 0:
        opt = getattr(engine.optimizer, "optimizer", engine.optimizer)
        for group in opt.param_groups:
            for p in group["params"]:
                _, m, v = local[names[id(p)]]
                opt.state[p] = {
                    "step": _like(full.step, p.device),
                    "exp_avg": m.to(p).clone(),
                    "exp_avg_sq": v.to(p).clone(),
                }
    else:
        zo = engine.optimizer
        groups = getattr(zo, "round_robin_bit16_groups", zo.bit16_groups)
        for g, params in enumerate(groups):
            size, fp32 = zo.partition_size[g], zo.single_partition_of_fp32_groups[g]
            dp_rank = dist.get_rank(group=zo.real_dp_process_group[g])
            dp = dist.get_world_size(group=zo.real_dp_process_group[g])
            parts = []
            for i in range(3):
                flat = torch.cat([local[names[id(p)]][i].flatten() for p in params])
                flat = torch.nn.functional.pad(flat, (0, size * dp - flat.numel()))
                parts.append(flat[dp_rank * size : (dp_rank + 1) * size].to(fp32))
            with torch.no_grad():
                fp32.copy_(parts[0])
            zo.optimizer.state[fp32] = {
                "step": _like(full.step, fp32.device),
                "exp_avg": parts[1].clone(),
                "exp_avg_sq": parts[2].clone(),
            }
    f = full.model_file
    if engine.lr_scheduler is not None and f.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(f["lr_scheduler"])
        last = f["lr_scheduler"].get("_last_lr")
        for opt in {id(o): o for o in (engine.optimizer, getattr(engine.optimizer, "optimizer", None)) if o}.values():
            for group, lr in zip(opt.param_groups, last or []):
                group["lr"] = lr  # the LR the next step uses (the scheduler sets it only when it steps)
    engine.global_steps, engine.global_samples = int(f["global_steps"]), int(f["global_samples"])
    engine.skipped_steps = int(f.get("skipped_steps", 0))
    return f


def _like(step: Any, device: torch.device) -> Any:
    return step.clone().to(device) if isinstance(step, torch.Tensor) else step


def resume_on_new_layout(
    engine, path: Path, group_names: list[list[str]], saved: SavedLayout | None = None
) -> tuple[dict[str, Any], SavedLayout] | None:
    """None when the checkpoint at `path` was written by this layout (DeepSpeed loads it as it is);
    else re-shard it into `engine` and return (its client state, the layout that wrote it)."""
    saved = saved or saved_layout(path)
    now = current_layout(engine)
    if saved == now:
        return None
    if 3 in (now.zero, saved.zero):
        from electra_dist.config import ConfigError

        raise ConfigError(
            [
                f"--resume: {path} was written by {saved} and this run is {now}: ZeRO-3 checkpoints "
                "resume only on their own layout, and a ZeRO-3 run only from its own (re-sharding covers "
                "ZeRO-0/1/2); `electra-dist export` reads any of them"
            ]
        )
    shapes = full_shapes(engine.module, now.tp)
    return install(engine, load_full_state(path, saved, shapes, group_names), shapes), saved
