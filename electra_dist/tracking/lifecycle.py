"""A run's record at its start and at its end, beside its metrics: the files that say what the run
was (config.yaml, deepspeed.json, the metrics header, parameters, tokenizer) and, at the end, its
curves and exported model as artifacts, and the tracker closed with the run's status."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from electra_dist.errors import writing
from electra_dist.rundir import OutputDir
from electra_dist.tracking.base import Tracker
from electra_dist.tracking.record import HEADER, plot_run, run_params


def start_record(
    tracker: Tracker,
    cfg,
    ds_config: dict[str, Any],
    layout,
    metrics_file: Path,
    resumed_from: str | None,
    changed: dict[str, str],
) -> None:
    """OUTPUT/config.yaml and deepspeed.json (every start: what THIS attempt ran with); for a run from
    step 0 the metrics header, the tracker's parameters and the config, DeepSpeed JSON and tokenizer
    as artifacts; the tracker's status and resume tags."""
    out = OutputDir(metrics_file.parent)
    with writing(out.root):
        cfg.save(out.config)
        out.deepspeed.write_text(json.dumps(ds_config, indent=2))
    if resumed_from is None:
        header = {
            "init_from": cfg.train.init_from or None,
            "objective": cfg.objective.kind,
            "embedding_sharing": cfg.objective.embedding_sharing,
            "max_steps": cfg.train.max_steps,
            "world": layout.world,
            "started": time.time(),
        }
        with writing(metrics_file), open(metrics_file, "w") as f:  # a run from step 0 starts its record
            f.write(json.dumps({"step": 0, HEADER: header}) + "\n")
        tracker.log_params(run_params(cfg, ds_config, layout.world, layout.tp_size, layout.dp_size))
        tracker.log_artifact(out.config)
        tracker.log_artifact(out.deepspeed)
        if cfg.data.tokenizer:
            from electra_dist.data.tokenizer import tokenizer_files

            for f in tokenizer_files(cfg.data.tokenizer):
                tracker.log_artifact(f, "tokenizer")
    tracker.set_tags(
        {
            "status": "running",
            "resumed_from": resumed_from or "",
            **{f"resumed_with.{k}": v for k, v in changed.items()},
        }
    )


def finish_record(tracker: Tracker, metrics_file: Path, status: str, export: Path | None = None) -> None:
    """The metrics JSONL and its curves as artifacts, the exported model (`export`, written by the final
    save) when the run finished, then the tracker closed with `status`."""
    if metrics_file.is_file() and tracker.enabled:
        tracker.log_artifact(metrics_file)
        png = plot_run(metrics_file, OutputDir(metrics_file.parent).curves)
        if png:
            tracker.log_artifact(png)
    if status == "finished" and export is not None and export.is_dir():
        tracker.log_artifact(export, "hf")
    tracker.close(status)
