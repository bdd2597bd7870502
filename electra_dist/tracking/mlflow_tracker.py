"""MLflow from global rank 0, sent from a background thread so the server never stops training.

The metrics JSONL in the output dir is the durable record; MLflow is a view of it. A slow, down
or unreachable server warns once; everything stays queued and is retried with backoff; on
(re)connecting, every JSONL record the run does not have yet is back-filled — which also makes a
resumed run one continuous history with no duplicate steps. OUTPUT/tracking.json (where the
run goes: URI, experiment, name, tags, run id once there is one) is written at the start, reachable
or not; whatever could not be sent by the end — params, tags, artifacts, the run's final status —
is kept in OUTPUT/tracking_pending.json and stated, and `electra-dist sync` sends it (with the
metrics, from the JSONL) later, creating the run if the server was never reached.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from electra_dist.io import write_atomic
from electra_dist.rundir import OutputDir
from electra_dist.tracking.base import Tracker
from electra_dist.tracking.record import read_metrics

log = logging.getLogger(__name__)

STATUS_TO_MLFLOW = {
    "finished": "FINISHED",
    "failed": "FAILED",
    "preempted": "KILLED",
    "stopped": "KILLED",
    "running": "RUNNING",
}


def _quiet_http() -> None:
    # our thread retries with backoff itself; MLflow's own retries would block it for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def create_sqlite_store(uri: str) -> None:
    """Create (migrate) a SQLite store under a file lock, so two processes never race on it."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)


class MLflowTracker(Tracker):
    """MLflow from global rank 0: params, namespaced metrics with steps, system metrics, tags,
    artifacts; resumes the run whose id the checkpoint carries. No call blocks on the network."""

    enabled = True

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        metrics_file: Path | None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = True,
        retry_max_seconds: float = 10.0,
        flush_timeout: float = 30.0,
    ):
        _quiet_http()
        self.uri = uri
        self.metrics_file = Path(metrics_file) if metrics_file else None  # None: nothing to back-fill from
        self.out = OutputDir(self.metrics_file.parent) if self.metrics_file is not None else None
        self._flush_timeout = flush_timeout
        if self.out is not None and self.out.root.is_dir():  # `sync` finds the run by it
            _write_json(
                self.out.tracking,
                {
                    "uri": uri,
                    "experiment": experiment,
                    "run_name": run_name,
                    "run_id": run_id,
                    "tags": dict(tags or {}),
                },
            )
        self._sender = _Sender(
            uri,
            experiment,
            run_name,
            self.metrics_file,
            run_id,
            dict(tags or {}),
            system_metrics,
            retry_max_seconds,
        )
        pending = self.out.pending if self.out is not None else None
        if pending is not None and pending.is_file():  # what an earlier session (or sync) could not send
            self._resend(json.loads(pending.read_text()))

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self._sender.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        self._sender.put("params", dict(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._sender.put("metrics", (step, dict(metrics), int(time.time() * 1000)))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._sender.put("tags", dict(tags))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._sender.put("artifact", (str(path), artifact_path))

    def _resend(self, items: list) -> None:
        """Queue what an earlier session could not send (its tracking_pending.json)."""
        for kind, payload in items:
            if kind in ("params", "tags", "artifact"):
                self._sender.put(kind, tuple(payload) if kind == "artifact" else dict(payload))

    def close(self, status: str = "finished", timeout: float | None = None) -> str:
        """Flush (up to `timeout` s), mark the run, and return a line saying what was not sent (kept in
        tracking_pending.json for `electra-dist sync`)."""
        self._sender.put("tags", {"status": status})
        self._sender.put("end", status)
        left = self._sender.finish(self._flush_timeout if timeout is None else timeout)
        n_metrics = sum(1 for kind, _ in left if kind == "metrics")
        other = [(kind, payload) for kind, payload in left if kind != "metrics"]
        pending = self.out.pending if self.out is not None else None
        if pending is not None and pending.parent.is_dir():
            if other:
                _write_json(pending, [[kind, payload] for kind, payload in other])
            else:
                pending.unlink(missing_ok=True)
        if not (n_metrics or other):
            return ""
        n_other = sum(1 for kind, _ in other if kind != "end")
        msg = (
            f"electra-dist: MLflow at {self.uri} did not receive {n_metrics} metric record(s), {n_other} other "
            f"item(s) (params/tags/artifacts)"
            + (" and the run's final status" if any(k == "end" for k, _ in other) else "")
        )
        if pending is not None:
            msg += (
                f"; the metrics are all in {self.metrics_file}, the rest in {pending}: send them later with "
                f"`electra-dist sync --output-dir {self.metrics_file.parent}`"
            )
        log.info(msg.removeprefix("electra-dist: "))
        return msg


class _Sender:
    """The background thread: a queue in, MLflow out, in order, with back-fill from the JSONL."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        metrics_file: Path | None,
        run_id: str | None,
        tags: dict[str, str],
        system_metrics: bool,
        retry_max: float,
    ):
        self.uri, self.experiment, self.run_name, self.metrics_file = uri, experiment, run_name, metrics_file
        self.run_id, self.tags, self.system_metrics, self.retry_max = run_id, tags, system_metrics, retry_max
        self.queue: queue.Queue = queue.Queue()
        self.pending: list[tuple[str, Any]] = []  # (kind, payload) not yet sent, in order
        self.logged_steps: set[int] = set()  # steps the run already has
        self.connected = self.warned = False
        self.monitor = None
        self.stop, self.wake, self.flushing = threading.Event(), threading.Event(), False
        try:
            self.connect()
        except Exception as e:  # the server may be down at start: keep going, retry in the thread
            self.warn(e)
        self.thread = threading.Thread(target=self.run, name="mlflow-sender", daemon=True)
        self.thread.start()

    def put(self, kind: str, payload: Any) -> None:
        self.queue.put((kind, payload))

    def finish(self, timeout: float) -> list[tuple[str, Any]]:
        """Wait up to `timeout` s for the queue to drain, stop the thread; return what is left."""
        deadline = time.time() + timeout
        self.flushing = True  # retry now and every second, not after the backoff: the run is ending
        self.wake.set()
        while self.thread.is_alive() and time.time() < deadline:
            self.thread.join(0.2)
            if self.queue.empty() and not self.pending:
                break
        self.stop.set()
        self.wake.set()
        self.thread.join(5)
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:
                pass
        return self.pending + [self.queue.get_nowait() for _ in range(self.queue.qsize())]

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                while True:
                    self.pending.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            if not self.pending:
                self.stop.wait(0.1)
                continue
            try:
                if not self.connected:
                    self.connect()
                self.send_pending()
                backoff = 1.0
            except Exception as e:
                self.warn(e)
                self.wake.wait(min(backoff, 1.0) if self.flushing else backoff)
                self.wake.clear()
                backoff = min(self.retry_max, backoff * 2)

    def warn(self, e: Exception) -> None:
        if not self.warned:
            self.warned = True
            log.warning(
                f"MLflow at {self.uri} is unreachable ({type(e).__name__}: "
                f"{str(e)[:200]}); training continues, metrics stay in {self.metrics_file or 'the queue'} "
                "and are sent when the server answers again"
            )

    def connect(self) -> None:
        from mlflow.tracking import MlflowClient

        create_sqlite_store(self.uri)
        self.client = MlflowClient(self.uri)
        if self.run_id is None:
            self.run_id = _create_run(self.client, self.uri, self.experiment, self.run_name, self.tags)
            self.logged_steps = set()
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "status", "running")
            self.logged_steps = {m.step for m in self.client.get_metric_history(self.run_id, "loss/total")}
        self.connected = True
        if self.metrics_file and self.metrics_file.parent.is_dir():  # where `electra-dist sync` finds the run
            info = {
                "uri": self.uri,
                "experiment": self.experiment,
                "run_name": self.run_name,
                "run_id": self.run_id,
                "tags": self.tags,
            }
            _write_json(OutputDir(self.metrics_file.parent).tracking, info)
        if self.warned:
            log.info(f"MLflow at {self.uri} answers again; back-filling")
        self.backfill()
        if self.system_metrics and self.monitor is None:
            self.monitor = _start_system_metrics(self.run_id, self.uri)

    def backfill(self) -> None:
        """Queue every JSONL record the run lacks (before anything pending for later steps)."""
        if self.metrics_file is not None:
            queued = {p[0] for kind, p in self.pending if kind == "metrics"}
            self.pending[:0] = [
                ("metrics", rec)
                for rec in _records(self.metrics_file)
                if rec[0] not in self.logged_steps and rec[0] not in queued
            ]

    def send_pending(self) -> None:
        from mlflow.entities import Param, RunTag

        while self.pending:
            kind, payload = self.pending[0]
            if kind == "metrics":
                self.send_metrics()
                continue
            if kind == "params":
                items = [Param(k, str(v)[:6000]) for k, v in payload.items()]
                for i in range(0, len(items), 100):
                    _send_params(self.client, self.run_id, items[i : i + 100])
            elif kind == "tags":
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in payload.items()])
            elif kind == "artifact":
                path, artifact_path = payload
                if Path(path).is_dir():
                    self.client.log_artifacts(self.run_id, path, artifact_path)
                elif Path(path).is_file():
                    self.client.log_artifact(self.run_id, path, artifact_path)
            elif kind == "end":
                self.client.set_terminated(self.run_id, status=STATUS_TO_MLFLOW.get(payload, "FINISHED"))
            self.pending.pop(0)

    def send_metrics(self) -> None:
        """Up to 50 consecutive pending steps in one request (MLflow takes 1000 values); a step
        both back-filled and queued live is sent once."""
        from mlflow.entities import Metric

        n = 0
        while n < min(50, len(self.pending)) and self.pending[n][0] == "metrics":
            n += 1
        chunk, seen = [], set(self.logged_steps)
        for _, p in self.pending[:n]:
            if p[0] not in seen:
                seen.add(p[0])
                chunk.append(p)
        batch = [Metric(k, float(v), t, step) for step, metrics, t in chunk for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        self.logged_steps.update(step for step, _, _ in chunk)
        del self.pending[:n]


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str))


def _records(metrics_file: Path) -> list[tuple[int, dict[str, float], int]]:
    """(step, metrics, time in ms) of every complete line of the metrics JSONL (a line the trainer
    is still writing is left out: it is queued live too)."""
    out = []
    for rec in read_metrics(metrics_file):
        step = rec.pop("step")
        out.append((step, rec, int(rec.pop("time", time.time()) * 1000)))
    return out


def _send_params(client, run_id: str, items) -> None:
    """A resumed run whose config changed keeps the first values and notes the new ones as tags."""
    try:
        client.log_batch(run_id, params=items)
    except Exception as e:
        if "INVALID_PARAMETER_VALUE" not in str(e) and "Changing param values" not in str(e):
            raise
        _log_changed_params(client, run_id, items)


def _log_changed_params(client, run_id: str, items) -> None:
    from mlflow.entities import Param, RunTag

    run = client.get_run(run_id)
    changed = [
        RunTag(f"resumed_with.{p.key}", p.value)
        for p in items
        if p.key in run.data.params and run.data.params[p.key] != p.value
    ]
    fresh = [Param(p.key, p.value) for p in items if p.key not in run.data.params]
    client.log_batch(run_id, params=fresh, tags=changed)


def _create_run(client, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    return client.create_run(exp_id, run_name=run_name, tags={**tags, "status": "running"}).info.run_id


def _start_system_metrics(run_id: str, uri: str):
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=10, tracking_uri=uri, resume_logging=True)
        monitor.start()
        return monitor
    except Exception as e:
        log.info(f"MLflow system metrics unavailable: {e}")
        return None
