"""The model: plain torch only (no torch.distributed, deepspeed or megatron imports)."""

from electra_dist.model.electra import (
    ElectraDiscriminator,
    ElectraEmbeddings,
    ElectraGenerator,
    ElectraPretrainer,
    PretrainOutput,
    count_parameters,
)
from electra_dist.model.layers import LayerFactory

__all__ = [
    "ElectraDiscriminator",
    "ElectraEmbeddings",
    "ElectraGenerator",
    "ElectraPretrainer",
    "PretrainOutput",
    "LayerFactory",
    "count_parameters",
]
