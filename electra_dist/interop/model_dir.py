"""Our consolidated model directory: `config.yaml` + `model.pt` (a full TP=1 state dict).

What the trainer writes to OUTPUT/final, what `export`, `finetune` and `import-hf` read and write.
`load_model` also reads any training checkpoint (OUTPUT/checkpoints/stepN, ZeRO 0-3, any TP size),
the checkpoints directory (its `latest`) or a run's output directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from electra_dist.config import Config
from electra_dist.model import ElectraPretrainer
from electra_dist.rundir import OutputDir

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


def _training_checkpoint(path: Path) -> Path | None:
    """The training checkpoint `path` names (itself, its `latest`, or its run's), if it names one."""
    for candidate in (path, OutputDir(path).checkpoints):
        if (candidate / "latest").is_file():
            candidate = candidate / (candidate / "latest").read_text().strip()
        if candidate.is_dir() and any(candidate.glob("*model_states.pt")):
            return candidate
    return None


def _load_training_checkpoint(path: Path) -> tuple[ElectraPretrainer, Config]:
    from electra_dist import parallel

    if not (path / "COMPLETE").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no COMPLETE marker): its writing was cut short")
    first = next(path.glob("*model_states.pt"))
    config_dict = parallel.load_checkpoint_file(first, map_location="cpu").get("config")
    if not config_dict:
        raise FileNotFoundError(f"{first} holds no config: not written by electra_dist")
    config = Config.from_dict(config_dict, source=str(first))
    model = ElectraPretrainer(config.model, config.objective)
    weights, _ = parallel.checkpoint_weights(path, {n: p.shape for n, p in model.named_parameters()})
    missing = [n for n, _ in model.named_parameters() if n not in weights]
    if missing:
        raise ValueError(f"{path}: no weights for {', '.join(missing[:5])}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    return model, config


def load_model(path: str | Path) -> tuple[ElectraPretrainer, Config]:
    """Load a checkpoint directory written by `save_model` (or the trainer's consolidated export), or any
    training checkpoint (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (ckpt := _training_checkpoint(path)) is not None:
        return _load_training_checkpoint(ckpt)
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
