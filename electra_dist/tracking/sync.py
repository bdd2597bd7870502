"""`electra-dist sync`: send MLflow what a run could not — every metrics.jsonl record the run lacks, the
params, tags and artifacts kept in tracking_pending.json, and the final status — into the run named by
tracking.json (or a new run where there is none)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from electra_dist.errors import UserError
from electra_dist.rundir import OutputDir


@dataclass
class Synced:
    run_id: str | None
    uri: str
    status: str
    pending: int  # params/tags/artifacts that were waiting in tracking_pending.json
    unsent: str  # what MLflow still did not receive ("" when it has everything)


def reachable(uri: str) -> None:
    """A URI MLflow knows, and (http) a server that answers within seconds, not after MLflow's minutes."""
    from electra_dist.config.schema import uri_problem
    from electra_dist.tracking.base import check_server
    from electra_dist.tracking.mlflow_tracker import _quiet_http

    if (problem := uri_problem(uri)) is not None:
        raise UserError(f"--tracking-uri: {problem}")
    _quiet_http()
    check_server(uri)


def sync_run(
    output_dir: str | Path, uri: str | None = None, experiment: str | None = None, timeout: float | None = None
) -> Synced:
    """Send what `output_dir`'s run lacks to its MLflow run (`uri` / `experiment` where tracking.json has
    none, or to move it); the status is the pending one, else finished (a final model) or preempted."""
    from electra_dist.tracking.mlflow_tracker import MLflowTracker

    out = OutputDir(output_dir)
    if not out.metrics.is_file():
        raise FileNotFoundError(f"{out.metrics} does not exist: is {out.root} a run's output directory?")
    info = json.loads(out.tracking.read_text()) if out.tracking.is_file() else {}
    uri, experiment = uri or info.get("uri"), experiment or info.get("experiment")
    if not uri or not experiment:
        raise FileNotFoundError(
            f"{out.tracking} does not exist (a run from before it was written): pass "
            "--tracking-uri and --experiment to create an MLflow run for it"
        )
    reachable(uri)
    pending = [tuple(item) for item in json.loads(out.pending.read_text())] if out.pending.is_file() else []
    status = next((p for kind, p in pending if kind == "end"), None)
    status = status or ("finished" if out.final.is_dir() else "preempted")
    t = MLflowTracker(
        uri,
        experiment,
        info.get("run_name") or out.root.name,
        out.metrics,
        run_id=info.get("run_id"),
        tags=info.get("tags"),
        system_metrics=False,
    )
    unsent = t.close(status, timeout=timeout)  # the tracker queues tracking_pending.json's items itself
    return Synced(t.run_id, uri, status, len(pending), unsent)
