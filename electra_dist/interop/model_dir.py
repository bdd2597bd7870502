"""Our consolidated model directory: `config.yaml` + `model.pt` (a full TP=1 state dict).

What the trainer writes to OUTPUT/final, what `export`, `finetune` and `import-hf` read and write.
"""

from __future__ import annotations

from pathlib import Path

import torch

from electra_dist.config import Config
from electra_dist.model import ElectraPretrainer

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"


def save_model(directory: str | Path, model: ElectraPretrainer, config: Config) -> Path:
    """Write a consolidated checkpoint: config.yaml + model.pt (written to a temp name, then renamed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory / CONFIG_FILE)
    tmp = directory / (MODEL_FILE + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(directory / MODEL_FILE)
    return directory


def load_model(path: str | Path) -> tuple[ElectraPretrainer, Config]:
    """Load a checkpoint directory written by `save_model` (or the trainer's consolidated export)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    directory = path if path.is_dir() else path.parent
    weights = path if path.is_file() else path / MODEL_FILE
    if not (directory / CONFIG_FILE).is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{path} is not an electra_dist checkpoint: expected {CONFIG_FILE} and {MODEL_FILE} in {directory}"
        )
    config = Config.from_yaml(directory / CONFIG_FILE)
    model = ElectraPretrainer(config.model, config.objective)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, config
