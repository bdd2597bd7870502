"""The tracker interface and its no-op default; where MLflow is when the config does not say."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from electra_dist.errors import UserError


class Tracker:
    """Does nothing. Real trackers subclass it; every method is safe to call on any rank."""

    run_id: str | None = None
    enabled = False  # whether anything logged goes anywhere (artifacts worth drawing)

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "finished") -> str:
        return ""


def resolve_tracking_uri(configured: str = "") -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else MLflow's own default: ./mlflow.db (SQLite)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """For http(s) URIs: the server answers /health within `timeout` s, else one clear error (MLflow's own
    client would retry for minutes in silence)."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(
            f"MLflow at {uri} does not answer ({getattr(e, 'reason', e)}): start the server "
            "(slurm/local/start_mlflow.sh starts one), or pass another --tracking-uri"
        ) from None
