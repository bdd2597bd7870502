"""Everything distributed, in one place; the rest of the package imports only this.

    launch   processes, megatron-core groups (TP × DP layout), the collectives training needs
    tensor   megatron-core's tensor-parallel layers as a LayerFactory, full ⟷ sharded weights
    engine   the DeepSpeed JSON checked against the config, deepspeed.initialize, FusedAdam,
             ZeRO-3 gathers, checkpoint files read weights-only
    reshard  a checkpoint resumed on another TP/DP size or ZeRO stage (0-2)

No other module of electra_dist imports deepspeed or megatron or calls torch.distributed
(tests/test_layout.py checks it). DeepSpeed's checkpoint API is used through the engine's own
methods (`engine.save_checkpoint` / `load_checkpoint`), which needs no import.
"""

from electra_dist.parallel.engine import (
    DEFAULT_DEEPSPEED,
    UntrustedCheckpointError,
    build_engine,
    full_state_dict,
    fused_adam,
    fused_adam_problem,
    grad_norm,
    load_checkpoint_file,
    load_deepspeed_json,
    resolve_deepspeed_config,
    zero_stage,
)
from electra_dist.parallel.launch import (
    MPU,
    CollectiveTimeout,
    DistEnv,
    Layout,
    any_rank,
    barrier,
    broadcast_from_main,
    collective_self_test,
    collective_timeouts,
    data_parallel_sum,
    destroy,
    detect_env,
    free_port,
    global_counts,
    init_distributed,
    init_model_parallel,
    is_collective_timeout,
    setup,
    use_cuda,
)
from electra_dist.parallel.reshard import SavedLayout, checkpoint_weights, current_layout, resume_on_new_layout
from electra_dist.parallel.tensor import TPLayerFactory, full_shape, gather_state_dict, layer_factory, load_full_weights

__all__ = [
    "CollectiveTimeout",
    "DEFAULT_DEEPSPEED",
    "MPU",
    "SavedLayout",
    "checkpoint_weights",
    "current_layout",
    "resume_on_new_layout",
    "UntrustedCheckpointError",
    "DistEnv",
    "Layout",
    "TPLayerFactory",
    "any_rank",
    "barrier",
    "broadcast_from_main",
    "build_engine",
    "collective_self_test",
    "collective_timeouts",
    "data_parallel_sum",
    "destroy",
    "detect_env",
    "free_port",
    "full_state_dict",
    "fused_adam",
    "fused_adam_problem",
    "full_shape",
    "gather_state_dict",
    "load_full_weights",
    "global_counts",
    "grad_norm",
    "init_distributed",
    "init_model_parallel",
    "is_collective_timeout",
    "layer_factory",
    "load_checkpoint_file",
    "load_deepspeed_json",
    "resolve_deepspeed_config",
    "setup",
    "use_cuda",
    "zero_stage",
]
