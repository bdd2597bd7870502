"""A run's output directory, every file in it named in one place, for the library and the commands alike.

OUTPUT/
  checkpoints/stepNNNNNNNN/  DeepSpeed's files, rng_rankNNNNN.pt, COMPLETE; checkpoints/latest
  metrics.jsonl              the durable record (a header, then one record per log step)
  metrics.jsonl.bad          lines of it that were not records, set aside on resume
  config.yaml, deepspeed.json  what the latest attempt ran with
  tracking.json              the MLflow server, experiment and run id (`sync` finds the run by it)
  tracking_pending.json      what MLflow did not receive (`electra-dist sync` sends it)
  final/                     the consolidated model (config.yaml + model.pt)
  hf/                        its Hugging Face export (tracking.log_hf_export)
  curves.png                 losses and speed against steps
  PREEMPTED                  stopped by a signal with steps left: the batch script requeues
  .lock                      held by the run writing here
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    checkpoints = property(lambda self: self.root / "checkpoints")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    config = property(lambda self: self.root / "config.yaml")
    deepspeed = property(lambda self: self.root / "deepspeed.json")
    tracking = property(lambda self: self.root / "tracking.json")
    pending = property(lambda self: self.root / "tracking_pending.json")
    final = property(lambda self: self.root / "final")
    hf_export = property(lambda self: self.root / "hf")
    curves = property(lambda self: self.root / "curves.png")
    preempted = property(lambda self: self.root / "PREEMPTED")
    lock = property(lambda self: self.root / ".lock")
