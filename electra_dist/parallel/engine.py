"""The DeepSpeed side: the JSON checked against our config, the engine, FusedAdam, ZeRO-3 gathers.

The DeepSpeed JSON owns ZeRO and engine settings; our config owns batch, precision, clipping
and the optimizer. `resolve_deepspeed_config` fills the JSON's "auto" values from the config
and names every disagreement in one error. `build_engine` is the single call to
`deepspeed.initialize`, with our optimizer and schedule and the megatron groups as its mpu.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from electra_dist.config import Config, ConfigError
from electra_dist.parallel.launch import MPU
from electra_dist.parallel.tensor import gather_state_dict

DEFAULT_DEEPSPEED: dict[str, Any] = {"zero_optimization": {"stage": 0}}


AUTO = "auto"


def resolve_deepspeed_config(
    cfg: Config, ds: dict[str, Any], dp_size: int, source: str = "DeepSpeed JSON"
) -> dict[str, Any]:
    """Fill the DeepSpeed JSON's "auto" values from the config and check every explicit one.

    The JSON owns ZeRO and engine settings; our config owns batch, precision, clipping and the
    optimizer. Every disagreement is collected into ONE ConfigError naming key, value and fix.
    """
    ds = copy.deepcopy(ds)
    t = cfg.train
    problems: list[str] = []
    per_step = t.micro_batch_size * dp_size
    if t.global_batch_size % per_step:
        problems.append(
            f"train.global_batch_size: {t.global_batch_size} is not a multiple of train.micro_batch_size "
            f"({t.micro_batch_size}) × data-parallel size ({dp_size}) = {per_step}; choose a global batch "
            f"that is, or another micro batch"
        )
        gas = max(1, t.global_batch_size // per_step)
    else:
        gas = t.global_batch_size // per_step
    expected = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    for key, value in expected.items():
        given = ds.get(key, AUTO)
        if given == AUTO:
            ds[key] = value
        elif given != value:
            problems.append(
                f'{source}: {key} is {given!r} but the config implies {value!r} (set it to "auto" or change the config)'
            )
    for prec in ("bf16", "fp16"):
        block = ds.setdefault(prec, {})
        want = t.precision == prec
        given = block.get("enabled", AUTO)
        if given == AUTO:
            block["enabled"] = want
        elif bool(given) != want:
            problems.append(
                f"{source}: {prec}.enabled is {given!r} but train.precision={t.precision!r} "
                f'(set it to "auto" or train.precision={prec if given else "fp32"})'
            )
    problems += _engine_problems(cfg, ds, source)
    if problems:
        raise ConfigError(problems)
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def _engine_problems(cfg: Config, ds: dict[str, Any], source: str) -> list[str]:
    """What the JSON may not hold beside our config: its own optimizer or schedule, an unknown ZeRO stage,
    ZeRO-3 with tensor parallelism."""
    problems: list[str] = []
    for block in ("optimizer", "scheduler"):
        if block in ds:
            problems.append(
                f"{source}: has an {block!r} block; the optimizer and LR schedule come from the "
                f"config's optim.* keys (AdamW without decay on LayerNorm/bias, warm-up + linear "
                f"decay): remove the block"
            )
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    tp = cfg.parallel.tensor_parallel_size
    if stage not in (0, 1, 2, 3):
        problems.append(f"{source}: zero_optimization.stage {stage!r} is not 0, 1, 2 or 3")
    elif stage == 3 and tp > 1:
        problems.append(
            f"ZeRO stage 3 with parallel.tensor_parallel_size={tp} is not supported: use "
            "configs/zero2.json (or zero1/zero0) with tensor parallelism, or TP=1 with ZeRO-3"
        )
    return problems


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"--deepspeed: {path} does not exist (see configs/zero*.json)"])
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError([f"not valid JSON: {e}"], source=str(path)) from None


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


FUSED_ADAM_FAILED = "fused_adam.failed"  # in TORCH_EXTENSIONS_DIR: the build failed here once; not tried again


def _failed_build_note() -> Path:
    """Where a failed FusedAdam build is noted: torch's extensions directory (procs.own_extensions_dir)."""
    import os

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions")) / FUSED_ADAM_FAILED


def fused_adam_problem() -> str | None:
    """Why DeepSpeed's FusedAdam cannot be had in this environment, or None. Prebuilt (DS_BUILD_FUSED_ADAM=1,
    as the Docker image does) is fine; otherwise it is built just in time by nvcc, which needs CUDA_HOME to be
    the real toolkit — torch guesses it from `nvcc` on PATH, and a wrapper script outside the CUDA tree makes
    that guess wrong (the build then fails after a minute). A build that failed once leaves a note so no
    other process of this environment tries again."""
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get("fused_adam"):
        return None
    note = _failed_build_note()
    if note.is_file():
        return f"its build failed here before ({note.read_text().strip()}; delete {note} to try again)"
    from torch.utils.cpp_extension import CUDA_HOME

    if not torch.cuda.is_available():
        return "no CUDA device"
    home = Path(CUDA_HOME) if CUDA_HOME else None
    if (
        home is None
        or not (home / "bin" / "nvcc").is_file()
        or not any(
            (home / inc / "cuda_runtime.h").is_file()
            for inc in ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include")
        )
    ):
        return (
            f"not prebuilt, and CUDA_HOME={home} is not a CUDA toolkit (bin/nvcc and include/cuda_runtime.h) to "
            "build it with: export CUDA_HOME=<the toolkit's directory> (bench/gpu_node.sh finds it from nvcc)"
        )
    return None


def fused_adam(groups: list[dict[str, Any]], **kw: Any) -> torch.optim.Optimizer:
    """DeepSpeed's FusedAdam in AdamW mode (GPU); raises RuntimeError saying why when it cannot be had here
    (`fused_adam_problem`), and leaves the note of a failed build for the next process."""
    problem = fused_adam_problem()
    if problem:
        raise RuntimeError(problem)
    from deepspeed.ops.adam import FusedAdam

    try:
        return FusedAdam(groups, adam_w_mode=True, **kw)
    except Exception as e:
        note = _failed_build_note()
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
        raise RuntimeError(f"its build failed ({type(e).__name__}: {e})") from e


def build_engine(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, ds_config: dict[str, Any]):
    """`deepspeed.initialize` over the megatron groups: ZeRO shards and reduces over data parallel only.
    Returns (engine, scheduler); `engine.module` is the model. Checkpoint files are read weights-only."""
    import deepspeed
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, mpu=MPU(), config=ds_config, dist_init_required=False
    )
    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        engine.checkpoint_engine.load = load_checkpoint_file  # DeepSpeed's own reads with weights_only=False
    return engine, scheduler


class UntrustedCheckpointError(RuntimeError):
    pass


def _allowed_globals() -> list[type]:
    """The only Python types besides tensors, containers and numbers that DeepSpeed's ZeRO and fp16
    checkpoint files hold."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_checkpoint_file(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)` with `_allowed_globals()`: a checkpoint file that would need
    any other code to unpickle (a crafted one runs it) is refused, naming the file and the type."""
    import pickle

    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), str(e).splitlines()[0])
            raise UntrustedCheckpointError(
                f"refusing to load {path}: it needs more than tensors and the allow-listed DeepSpeed types to "
                f"unpickle ({what}); a checkpoint that does can run code. Resume only from checkpoints "
                "this program wrote."
            ) from None


def full_state_dict(model: nn.Module, stage: int) -> dict[str, torch.Tensor]:
    """The full TP=1 weights on every rank: ZeRO-3 partitions gathered first, then TP shards."""
    if stage != 3:
        return gather_state_dict(model)
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return gather_state_dict(model)


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of the gradients, before clipping, on the device (no host sync): squares of
    tensor-parallel shards summed over the TP group, replicated parameters counted once. For the
    engines whose own norm DeepSpeed does not keep (ZeRO-0 with a torch optimizer in fp32)."""
    import torch.distributed as dist

    mpu = MPU()
    tp_rank, tp_size = mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()
    squares = [
        p.grad.detach().float().pow(2).sum()
        for p in model.parameters()
        if p.grad is not None and (tp_rank == 0 or getattr(p, "tensor_model_parallel", False))
    ]
    total = torch.stack(squares).sum() if squares else torch.zeros((), device=next(model.parameters()).device)
    if tp_size > 1:
        dist.all_reduce(total, group=mpu.get_model_parallel_group())
    return total.sqrt()
