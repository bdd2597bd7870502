"""Experiment tracking: a tracker interface, a no-op tracker, and (rank 0 only) MLflow.

The trainer talks only to `Tracker`; the metrics JSONL in the output dir stays the durable
record whatever the tracker does.
"""

from __future__ import annotations

from typing import Any


class Tracker:
    """Does nothing. Real trackers subclass it; every method is safe to call on any rank."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass
