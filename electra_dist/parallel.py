"""Everything parallel, in one place: process start-up, megatron-core groups, TP layers, DeepSpeed's mpu.

This is the ONLY module that imports megatron.core. Ranks are laid out by
`parallel_state.initialize_model_parallel`: consecutive ranks form a tensor-parallel group,
the rest is data parallel. The TP layer factory swaps megatron-core's Column/RowParallelLinear
and VocabParallelEmbedding into the plain-torch model; `MPU` hands DeepSpeed the groups so
ZeRO shards and reduces over the data-parallel group only.
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from electra_dist.model.layers import LayerFactory


# ---- process start-up ----------------------------------------------------------------------

@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # deepspeed/torchrun (env://), srun, or single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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
    env.setdefault("MASTER_PORT", str(_free_port()))
    return DistEnv(0, 1, 0, "single")


def _slurm_master() -> str:
    import subprocess

    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodes.split(",")[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("ELECTRA_DIST_FORCE_CPU") != "1"


def init_distributed(timeout_minutes: int = 30) -> tuple[DistEnv, torch.device]:
    """Start torch.distributed (nccl on GPU, gloo on CPU) through DeepSpeed's helper."""
    env = detect_env()
    if not use_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if use_cuda():
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda() else "gloo", auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(minutes=timeout_minutes), verbose=False)
    return env, device


def init_model_parallel(tensor_parallel_size: int) -> None:
    from megatron.core import parallel_state as ps

    world = dist.get_world_size()
    if world % tensor_parallel_size:
        from electra_dist.config import ConfigError

        raise ConfigError([f"parallel.tensor_parallel_size={tensor_parallel_size} does not divide the world size "
                           f"{world}: launch a multiple of {tensor_parallel_size} ranks"])
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size,
                                 create_gloo_process_groups=not use_cuda())


def destroy() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- groups -------------------------------------------------------------------------------

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


# ---- tensor-parallel layers ---------------------------------------------------------------

def _mark(param: nn.Parameter, dim: int) -> nn.Parameter:
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1)
    return param


class TPLayerFactory(LayerFactory):
    """megatron-core layers; the full weight is built on every rank from the same RNG state
    and sliced, so a TP model starts from exactly the weights of the TP=1 model."""

    def __init__(self, init_std: float = 0.02):
        from megatron.core import ModelParallelConfig
        from megatron.core import parallel_state as ps

        super().__init__(init_std)
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.group = ps.get_tensor_model_parallel_group()
        self.mp_config = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                             perform_initialization=True, params_dtype=torch.float32)

    def _init(self, w: torch.Tensor) -> torch.Tensor:
        return nn.init.normal_(w, std=self.init_std)

    def column_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        layer = _Column(in_features, out_features, config=self.mp_config, init_method=self._init, bias=bias,
                        gather_output=False)
        return layer

    def row_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return _Row(in_features, out_features, config=self.mp_config, init_method=self._init, bias=bias,
                    input_is_parallel=True, skip_bias_add=False)

    def vocab_embedding(self, num_embeddings: int, embedding_dim: int) -> nn.Module:
        from megatron.core.tensor_parallel import VocabParallelEmbedding

        return VocabParallelEmbedding(num_embeddings, embedding_dim, init_method=self._init, config=self.mp_config)

    def vocab_bias(self, padded_vocab: int) -> nn.Parameter:
        return _mark(super().vocab_bias(padded_vocab), dim=0)

    def lm_logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        # identity forward; all-reduce of the input gradient over TP ranks in backward
        return F.linear(copy_to_tensor_model_parallel_region(hidden, group=self.group), weight, bias)

    def vocab_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        # megatron's kernel overwrites its input with exp(logits - max): give it a copy, the
        # logits are still needed for sampling
        logits = logits.to(torch.float32, copy=True)
        return vocab_parallel_cross_entropy(logits.unsqueeze(0), target.unsqueeze(0)).squeeze(0)

    def vocab_argmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Global argmax with ONE all-reduce: (order-preserving value bits, inverted global
        index) packed into an int64; MAX picks the largest value, ties to the smallest id."""
        value, local = scores.float().max(dim=-1)
        bits = value.view(torch.int32).to(torch.int64)
        ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # float order == int order
        global_id = local.to(torch.int64) + self.tp_rank * scores.shape[-1]
        packed = (ordered << 32) | (0xFFFFFFFF - global_id)
        dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=self.group)
        return 0xFFFFFFFF - (packed & 0xFFFFFFFF)


@functools.cache
def _tp_classes():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    class Column(ColumnParallelLinear):
        """Returns the output only (bias added), like nn.Linear; the weight keeps its name."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x)[0]

    class Row(RowParallelLinear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x)[0]

    return Column, Row


def _Column(*args, **kwargs):
    return _tp_classes()[0](*args, **kwargs)


def _Row(*args, **kwargs):
    return _tp_classes()[1](*args, **kwargs)


def layer_factory(tensor_parallel_size: int, init_std: float) -> LayerFactory:
    return TPLayerFactory(init_std) if tensor_parallel_size > 1 else LayerFactory(init_std)


# ---- full ⟷ sharded weights -----------------------------------------------------------------

def _partition_dim(p: torch.Tensor) -> int | None:
    return p.partition_dim if getattr(p, "tensor_model_parallel", False) else None


def gather_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (TP=1) state dict, gathered over the TP group (every TP rank gets it)."""
    from megatron.core import parallel_state as ps

    tp, group = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_group()
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue  # megatron's `_extra_state` placeholders
        p = params.get(name)
        dim = _partition_dim(p) if p is not None else None
        value = value.detach()
        if dim is not None and tp > 1:
            parts = [torch.empty_like(value) for _ in range(tp)]
            dist.all_gather(parts, value.contiguous(), group=group)
            value = torch.cat(parts, dim=dim)
        out[name] = value.cpu()
    return out
