"""electra_dist: distributed ELECTRA pre-training (DeepSpeed ZeRO × megatron-core TP)."""

__version__ = "0.1.0"
