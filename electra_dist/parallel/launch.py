"""Processes, groups and collectives: how ranks find each other and what they say to each other.

Ranks come from torchrun/deepspeed (RANK, WORLD_SIZE, LOCAL_RANK), from srun (SLURM_*), or
there is one process. `setup` starts torch.distributed (nccl on GPU, gloo on CPU) and lays the
ranks out with megatron-core's `initialize_model_parallel`: consecutive ranks form a
tensor-parallel group, the rest is data parallel. The collectives the trainer needs — the
global token counts with the stop flag, "did any rank fail", sums over the data-parallel
group, a barrier — are the functions at the end, so the training code never calls
torch.distributed itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist

# ---- process start-up ----------------------------------------------------------------------


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # deepspeed/torchrun (env://), srun, or single


def detect_env() -> DistEnv:
    """Read the rank layout from torchrun/deepspeed (RANK, WORLD_SIZE, LOCAL_RANK) or from srun
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID); no variables at all means one process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "env")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("SLURM_STEP_ID") is not None:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=env.get("SLURM_LOCALID", "0"))
        env.setdefault("MASTER_ADDR", _slurm_master())
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 10000))
        return DistEnv(rank, world, int(env["LOCAL_RANK"]), "srun")
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(free_port()))
    return DistEnv(0, 1, 0, "single")


def _slurm_master() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodes.split(",")[0]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a rendezvous or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("ELECTRA_DIST_FORCE_CPU") != "1"


def gpus_allocated() -> str | None:
    """The scheduler's word that this process was given GPUs (the variable and its value), or None.
    (Not CUDA_VISIBLE_DEVICES: the deepspeed launcher sets it on CPU machines too.)"""
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
        value = os.environ.get(var, "")
        if value and value not in ("0", "-1", "NoDevFiles", "none"):
            return f"{var}={value}"
    return None


def init_distributed(timeout_s: float = 600.0) -> tuple[DistEnv, torch.device]:
    """Start torch.distributed (nccl on GPU, gloo on CPU) through DeepSpeed's helper; every collective
    waits at most `timeout_s` for the other ranks. GPUs allocated but invisible stop here, saying so."""
    env = detect_env()
    if not use_cuda():
        allocated = gpus_allocated()
        if (
            allocated
            and os.environ.get("ELECTRA_DIST_ALLOW_CPU", "0") == "0"
            and os.environ.get("ELECTRA_DIST_FORCE_CPU") != "1"
        ):
            from electra_dist.config import ConfigError

            raise ConfigError(
                [
                    f"the scheduler allocated GPUs to this process ({allocated}) but torch sees none "
                    f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): in an apptainer "
                    "container pass them in (--nv; slurm/container.sh does), or install torch's CUDA "
                    "build; ELECTRA_DIST_ALLOW_CPU=1 trains on the CPU anyway"
                ]
            )
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(os.environ.get("ELECTRA_DIST_DEEPSPEED_LOG", "WARNING"))  # its INFO lines, per rank, drown ours

    if use_cuda():
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if use_cuda() else "gloo",
            auto_mpi_discovery=False,
            timeout=datetime.timedelta(seconds=timeout_s),
            verbose=False,
        )
    return env, device


def init_model_parallel(tensor_parallel_size: int, timeout_s: float = 600.0) -> None:
    from megatron.core import parallel_state as ps

    world = dist.get_world_size()
    if world % tensor_parallel_size:
        from electra_dist.config import ConfigError

        raise ConfigError(
            [
                f"parallel.tensor_parallel_size={tensor_parallel_size} does not divide the world size "
                f"{world}: launch a multiple of {tensor_parallel_size} ranks"
            ]
        )
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel_size,
        create_gloo_process_groups=not use_cuda(),
        distributed_timeout_minutes=timeout_s / 60,
    )  # a timedelta(minutes=) there


@dataclass
class Layout:
    """Where this process stands: global rank, tensor-parallel and data-parallel coordinates."""

    rank: int
    world: int
    tp_size: int
    tp_rank: int
    dp_size: int
    dp_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"


_CONTROL: dict[str, object] = {}  # the gloo group for host-side control messages


def setup(tensor_parallel_size: int = 1, timeout_s: float = 600.0) -> Layout:
    """Processes and groups: the first thing a training process does. `timeout_s` bounds every
    collective of the default and control groups (a hung peer ends the run, see CollectiveTimeout)."""
    env, device = init_distributed(timeout_s)
    init_model_parallel(tensor_parallel_size, timeout_s)
    # counts and stop flags live on the host: a CPU (gloo) group carries them, so reading the
    # result never waits for the GPU's queue
    _CONTROL["group"] = (
        dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        if dist.get_backend() != "gloo"
        else None
    )
    mpu = MPU()
    return Layout(
        env.rank,
        env.world_size,
        tensor_parallel_size,
        mpu.get_model_parallel_rank(),
        mpu.get_data_parallel_world_size(),
        mpu.get_data_parallel_rank(),
        device,
    )


class CollectiveTimeout(RuntimeError):
    """A collective waited `parallel.collective_timeout` for a peer that never came."""


def is_collective_timeout(e: BaseException) -> bool:
    """gloo raises "Timed out waiting ...ms for ... operation"; NCCL's watchdog "Watchdog caught collective
    operation timeout"."""
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "Timed out waiting" in text or "operation timeout" in text or "Connection closed by peer" in text
    )


@contextlib.contextmanager
def collective_timeouts(rank: int, step: Callable[[], int], timeout_s: float) -> Iterator[None]:
    """A collective that timed out (or whose peer closed its connection) inside leaves as one
    `CollectiveTimeout` naming this rank, the step it was on, and what it means for the user."""
    try:
        yield
    except RuntimeError as e:
        if not is_collective_timeout(e):
            raise
        why = (
            "another rank is gone (its connection closed: it stopped or crashed first)"
            if "Connection closed" in str(e)
            else "the other ranks did not answer within parallel."
            f"collective_timeout={timeout_s:g}s: one is hung, stopped or gone"
        )
        raise CollectiveTimeout(
            f"rank {rank}: at step {step()}, {why}. The newest complete checkpoint is kept; "
            f"resume with the same command. ({str(e).splitlines()[0][:200]})"
        ) from None


def destroy(wait: bool = True) -> None:
    """Tear the groups down; `wait`: first a barrier, so no rank leaves while another still sends."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    _CONTROL.clear()
    if dist.is_initialized() and wait:
        dist.barrier()
        dist.destroy_process_group()


class MPU:
    """The `mpu` DeepSpeed asks for: model parallel = our tensor parallel; data parallel = the rest."""

    def __init__(self):
        from megatron.core import parallel_state as ps

        self.ps = ps

    def get_model_parallel_rank(self) -> int:
        return self.ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self.ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self.ps.get_tensor_model_parallel_group()

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self.ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self.ps.get_data_parallel_group()


# ---- collectives ---------------------------------------------------------------------------


def global_counts(tokens: float, masked: float, stop: bool) -> tuple[float, float, bool]:
    """ONE all-reduce over every rank, on the host (gloo): the global batch's non-pad and masked
    token counts (TP ranks hold the same batch, so they count once) and whether any rank was asked
    to stop. Nothing here touches the GPU."""
    local = torch.tensor([tokens, masked, float(stop)], dtype=torch.float64)
    dist.all_reduce(local, group=_CONTROL.get("group"))
    tp = MPU().get_model_parallel_world_size()
    tokens_all, masked_all, stops = local.tolist()
    return tokens_all / tp, masked_all / tp, stops > 0


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (a host-side all-reduce, like global_counts)."""
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, group=_CONTROL.get("group"))
    return t.item() > 0


def data_parallel_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the data-parallel group (in place; returned for convenience)."""
    dist.all_reduce(values, group=MPU().get_data_parallel_group())
    return values


def barrier() -> None:
    dist.barrier()


def collective_self_test(backend: str) -> dict:
    """A one-rank process group of `backend` (nccl on a GPU node) doing one all-reduce, in this
    process, before anything else started torch.distributed: does the communication library work?"""
    import tempfile
    import time

    if dist.is_initialized():
        raise RuntimeError("collective_self_test must run before torch.distributed is started")
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(f"{tmp}/store", 1)
        t0 = time.perf_counter()
        dist.init_process_group(backend, store=store, rank=0, world_size=1)
        try:
            x = torch.ones(1 << 20, device=device)
            dist.all_reduce(x)
            ok = bool(x.eq(1).all())
        finally:
            dist.destroy_process_group()
    version = torch.cuda.nccl.version() if backend == "nccl" else None  # a tuple, or an int in older torch
    return {
        "backend": backend,
        "all_reduce_ok": ok,
        "seconds": round(time.perf_counter() - t0, 3),
        "nccl_version": ".".join(map(str, version)) if isinstance(version, tuple) else version,
    }


def broadcast_from_main(obj):
    """Global rank 0's (picklable) object, on every rank; over the host-side group."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_CONTROL.get("group"))
    return box[0]
