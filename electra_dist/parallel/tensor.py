"""Tensor-parallel layers from megatron-core, and the full ⟷ sharded weights.

The TP layer factory swaps megatron-core's Column/RowParallelLinear and VocabParallelEmbedding
into the plain-torch model (electra_dist.model builds every split layer through a factory);
`gather_state_dict` puts the full TP=1 weights back together.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from electra_dist.model.layers import LayerFactory

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
        self.mp_config = ModelParallelConfig(
            tensor_model_parallel_size=self.tp_size,
            use_cpu_initialization=True,
            perform_initialization=True,
            params_dtype=torch.float32,
        )

    def _init(self, w: torch.Tensor) -> torch.Tensor:
        return nn.init.normal_(w, std=self.init_std)

    def column_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        layer = _Column(
            in_features, out_features, config=self.mp_config, init_method=self._init, bias=bias, gather_output=False
        )
        return layer

    def row_linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return _Row(
            in_features,
            out_features,
            config=self.mp_config,
            init_method=self._init,
            bias=bias,
            input_is_parallel=True,
            skip_bias_add=False,
        )

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


def full_shape(p: torch.Tensor, tp: int) -> torch.Size:
    """The TP=1 shape of this rank's (possibly TP-sharded) parameter, `tp` ranks splitting it."""
    dim = _partition_dim(p)
    if dim is None or tp == 1:
        return p.shape
    shape = list(p.shape)
    shape[dim] *= tp
    return torch.Size(shape)


def local_slice(x: torch.Tensor, dim: int | None, tp: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's part of a full tensor split along `dim` (None: not split)."""
    return x if dim is None else x.chunk(tp, dim=dim)[tp_rank]


@torch.no_grad()
def load_full_weights(model: nn.Module, full: dict[str, torch.Tensor], tp: int, tp_rank: int) -> None:
    """Copy full (TP=1) tensors into this rank's parameters of the same names, each TP rank its slice
    (the inverse of gather_state_dict)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in full.items():
        p = params[name]
        t = local_slice(t, _partition_dim(p), tp, tp_rank)
        if t.shape != p.shape:
            raise ValueError(f"{name}: a {tuple(t.shape)} slice for a {tuple(p.shape)} parameter")
        p.copy_(t.to(device=p.device, dtype=p.dtype))
