"""Models in and out: our consolidated model directory and Hugging Face's ELECTRA."""

from electra_dist.interop.hf import (
    export_hf,
    hf_config_dict,
    import_hf,
    load_hf_weights,
    model_config_from_hf,
    to_hf,
    tower_from_hf,
    tower_to_hf,
)
from electra_dist.interop.model_dir import CONFIG_FILE, MODEL_FILE, load_model, save_model

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "export_hf",
    "hf_config_dict",
    "import_hf",
    "load_hf_weights",
    "load_model",
    "model_config_from_hf",
    "save_model",
    "to_hf",
    "tower_from_hf",
    "tower_to_hf",
]
