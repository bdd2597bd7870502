"""Experiment tracking: a tracker interface (base.py), MLflow from global rank 0 sent from a
background thread (mlflow_tracker.py), and what a run records about itself (record.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from electra_dist.tracking.base import Tracker, resolve_tracking_uri
from electra_dist.tracking.record import git_commit, package_versions, plot_run, read_header, read_metrics, run_params

log = logging.getLogger(__name__)

__all__ = [
    "Tracker",
    "git_commit",
    "make_tracker",
    "package_versions",
    "plot_run",
    "read_header",
    "read_metrics",
    "resolve_tracking_uri",
    "run_params",
]


def default_run_name(cfg) -> str:
    """flavor, what differs from the flavor's defaults (data, output and tracking aside), time:
    `electra-small lr=0.001 tensor_parallel_size=2 20261124-183000`."""
    from electra_dist.config import FLAVORS, Config, flatten

    differs = []
    if cfg.flavor in FLAVORS:
        base = dict(flatten(Config.from_name(cfg.flavor).to_dict()))
        # a run from published weights is named by them, not by the shape it took from them
        skip = (
            "data.",
            "tracking.",
            "output_dir",
            "model.vocab_size",
            "train.save_interval",
            "train.log_interval",
            "train.keep_last",
            "parallel.collective_timeout",
            "parallel.stop_timeout",
        ) + (("model.", "train.init_from") if cfg.train.init_from else ())
        differs = [
            f"{k.split('.')[-1]}={v}" for k, v in flatten(cfg.to_dict()) if base.get(k) != v and not k.startswith(skip)
        ]
        if cfg.train.init_from:
            differs.insert(0, f"from={Path(cfg.train.init_from).name}")
    return " ".join([cfg.flavor, *differs[:6], time.strftime("%Y%m%d-%H%M%S")])


def make_tracker(cfg, is_main: bool, metrics_file: Path, run_id: str | None = None) -> Tracker:
    """MLflow on global rank 0 when tracking is on (and mlflow importable); a no-op tracker elsewhere."""
    if not is_main or not cfg.tracking.enabled:
        return Tracker()
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log.warning(
            "tracking.enabled=true but mlflow is not installed; metrics go to "
            f"{metrics_file} only (install mlflow, or set tracking.enabled=false)"
        )
        return Tracker()
    from electra_dist.tracking.mlflow_tracker import MLflowTracker

    name = cfg.tracking.run_name or default_run_name(cfg)
    tags = {
        "flavor": cfg.flavor,
        "objective": cfg.objective.kind,
        "init_from": cfg.train.init_from,
        "mlflow.note.content": (
            f"electra_dist {cfg.flavor} ({cfg.objective.kind}), output {Path(cfg.output_dir).resolve()}"
        ),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update(cfg.tracking.tag_dict())
    return MLflowTracker(
        resolve_tracking_uri(cfg.tracking.uri),
        cfg.tracking.experiment,
        name,
        metrics_file,
        run_id=run_id,
        tags=tags,
        flush_timeout=cfg.tracking.flush_timeout,
    )
