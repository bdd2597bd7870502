"""The typed configuration tree: dataclasses with help text, named flavors, YAML and dotted overrides.

    schema    the sections (model, objective, optim, train, parallel, data, tracking): each field with its
              help text and what it accepts, each section with its checks across fields
    tree      `Config`: YAML, dotted `key.sub=value` overrides, a flavor by name; `problems()` joins every
              section's and the checks across sections, `validate()` raises them once
    flavors   `debug`, `electra-small`, `-base`, `-large` as data: the paper's hyperparameters

ZeRO and engine settings live only in the DeepSpeed JSON (electra_dist.parallel.engine checks it
against the config).
"""

from electra_dist.config.schema import (
    ConfigError,
    DataConfig,
    EncoderConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    ParallelConfig,
    TrackingConfig,
    TrainConfig,
)
from electra_dist.config.tree import FLAVORS, Config, flatten, keys_help, suggest_key

__all__ = [
    "FLAVORS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EncoderConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "ParallelConfig",
    "TrackingConfig",
    "TrainConfig",
    "flatten",
    "keys_help",
    "suggest_key",
]
