"""Experiment tracking: a tracker interface, a no-op tracker, and an MLflow tracker for global rank 0.

The metrics JSONL in the output dir is the durable record; MLflow is a view of it. The MLflow
tracker sends from a background thread, so a slow, down or unreachable server never stops
training: it warns once, keeps everything queued, retries with backoff, and on (re)connecting
back-fills every JSONL record the run does not have yet — which also makes a resumed run one
continuous history with no duplicate steps. Whatever could not be sent by the end is stated,
and `electra-dist sync` sends it later.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STATUS_TO_MLFLOW = {"finished": "FINISHED", "failed": "FAILED", "preempted": "KILLED", "running": "RUNNING"}


class Tracker:
    """Does nothing. Real trackers subclass it; every method is safe to call on any rank."""

    run_id: str | None = None

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


def _quiet_http() -> None:
    # our thread retries with backoff itself; MLflow's own retries would block it for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def create_sqlite_store(uri: str) -> None:
    """Create (migrate) a SQLite store under a file lock, so two processes never race on it."""
    if not uri.startswith("sqlite:///"):
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)


class MLflowTracker(Tracker):
    """MLflow from global rank 0: params, namespaced metrics with steps, system metrics, tags,
    artifacts; resumes the run whose id the checkpoint carries."""

    def __init__(self, uri: str, experiment: str, run_name: str, metrics_file: Path | None, run_id: str | None = None,
                 tags: dict[str, str] | None = None, system_metrics: bool = True, log=print,
                 retry_max_seconds: float = 60.0, flush_timeout: float = 30.0):
        _quiet_http()
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.metrics_file = Path(metrics_file) if metrics_file else None  # None: nothing to back-fill from
        self.run_id = run_id
        self._tags = dict(tags or {})
        self._system_metrics = system_metrics
        self._log = log
        self._retry_max = retry_max_seconds
        self._flush_timeout = flush_timeout
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[tuple[str, Any]] = []  # (kind, payload) not yet sent, in order
        self._logged_steps: set[int] | None = None  # steps the run already has (for back-fill)
        self._warned = False
        self._stop = threading.Event()
        self._connected = False
        self._monitor = None
        self.unsent: list[str] = []
        create_error = None
        try:
            self._connect()
        except Exception as e:  # the server may be down at start: keep going, retry in the thread
            create_error = e
        if create_error is not None:
            self._warn(create_error)
        self._thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self._thread.start()

    # ---- public API (called by the trainer, never blocks on the network) ---------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._queue.put(("params", dict(params)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue.put(("metrics", (step, dict(metrics), int(time.time() * 1000))))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._queue.put(("tags", dict(tags)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(("artifact", (str(path), artifact_path)))

    def close(self, status: str = "finished", timeout: float | None = None) -> str:
        """Flush (up to `timeout` s), mark the run, and return a line saying what was not sent."""
        self._queue.put(("tags", {"status": status}))
        self._queue.put(("end", status))
        deadline = time.time() + (self._flush_timeout if timeout is None else timeout)
        while self._thread.is_alive() and time.time() < deadline:
            self._thread.join(0.2)
            if self._queue.empty() and not self._pending:
                break
        self._stop.set()
        self._thread.join(5)
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:
                pass
        left = self._pending + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        n_metrics = sum(1 for kind, _ in left if kind == "metrics")
        n_other = sum(1 for kind, _ in left if kind not in ("metrics", "end"))
        if n_metrics or n_other:
            msg = (f"electra-dist: MLflow at {self.uri} did not receive {n_metrics} metric record(s) and "
                   f"{n_other} other item(s) (params/tags/artifacts)")
            if self.metrics_file is not None:
                msg += (f"; the metrics are all in {self.metrics_file}: send them later with "
                        f"`electra-dist sync --output-dir {self.metrics_file.parent}`")
            self._log(msg)
            return msg
        return ""

    # ---- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                while True:
                    self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if not self._pending:
                self._stop.wait(0.1)
                continue
            try:
                if not self._connected:
                    self._connect()
                self._send_pending()
                backoff = 1.0
            except Exception as e:
                self._warn(e)
                self._stop.wait(backoff)
                backoff = min(self._retry_max, backoff * 2)

    def _warn(self, e: Exception) -> None:
        if not self._warned:
            self._warned = True
            self._log(f"electra-dist: warning: MLflow at {self.uri} is unreachable ({type(e).__name__}: "
                      f"{str(e)[:200]}); training continues, metrics stay in {self.metrics_file or 'the queue'} "
                      "and are sent when the server answers again")

    def _connect(self) -> None:
        from mlflow.tracking import MlflowClient

        create_sqlite_store(self.uri)
        self.client = MlflowClient(self.uri)
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                artifacts = None
                if self.uri.startswith("sqlite:///"):
                    artifacts = (Path(self.uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
                exp_id = self.client.create_experiment(self.experiment, artifact_location=artifacts)
            else:
                exp_id = exp.experiment_id
            run = self.client.create_run(exp_id, run_name=self.run_name, tags={**self._tags, "status": "running"})
            self.run_id = run.info.run_id
            self._logged_steps = set()
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "status", "running")
            history = self.client.get_metric_history(self.run_id, "loss/total")
            self._logged_steps = {m.step for m in history}
        self._connected = True
        if self.metrics_file and self.metrics_file.parent.is_dir():  # where `electra-dist sync` finds the run
            info = {"uri": self.uri, "experiment": self.experiment, "run_id": self.run_id}
            (self.metrics_file.parent / "tracking.json").write_text(json.dumps(info, indent=2))
        if self._warned:
            self._log(f"electra-dist: MLflow at {self.uri} answers again; back-filling")
        self._backfill()
        if self._system_metrics and self._monitor is None:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=self.uri,
                                                     resume_logging=True)
                self._monitor.start()
            except Exception as e:
                self._log(f"electra-dist: MLflow system metrics unavailable: {e}")

    def _backfill(self) -> None:
        """Queue every JSONL record the run lacks (before anything pending for later steps)."""
        if self.metrics_file is None or not self.metrics_file.is_file():
            return
        queued = {p[0] for kind, p in self._pending if kind == "metrics"}
        missing = []
        for line in self.metrics_file.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line the trainer is still writing: it is queued live too
                continue
            step = rec.pop("step")
            t = int(rec.pop("time", time.time()) * 1000)
            if step not in self._logged_steps and step not in queued:
                missing.append(("metrics", (step, rec, t)))
        self._pending[:0] = missing

    def _send_pending(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        while self._pending:
            kind, payload = self._pending[0]
            if kind == "metrics":  # up to 50 consecutive steps per request (MLflow takes 1000 values)
                n = 0
                while n < min(50, len(self._pending)) and self._pending[n][0] == "metrics":
                    n += 1
                chunk, seen = [], set(self._logged_steps)
                for _, p in self._pending[:n]:  # a step back-filled AND queued live is sent once
                    if p[0] not in seen:
                        seen.add(p[0])
                        chunk.append(p)
                batch = [Metric(k, float(v), t, step) for step, metrics, t in chunk for k, v in metrics.items()]
                for i in range(0, len(batch), 1000):
                    self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
                self._logged_steps.update(step for step, _, _ in chunk)
                del self._pending[:n]
                continue
            if kind == "params":
                items = [Param(k, str(v)[:6000]) for k, v in payload.items()]
                for i in range(0, len(items), 100):
                    try:
                        self.client.log_batch(self.run_id, params=items[i:i + 100])
                    except Exception as e:
                        if "INVALID_PARAMETER_VALUE" in str(e) or "Changing param values" in str(e):
                            self._log_changed_params(items[i:i + 100])
                        else:
                            raise
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
            self._pending.pop(0)

    def _log_changed_params(self, items) -> None:
        """A resumed run whose config changed: keep the first values, note the new ones as tags."""
        from mlflow.entities import Param, RunTag

        run = self.client.get_run(self.run_id)
        changed = [RunTag(f"resumed_with.{p.key}", p.value) for p in items
                   if p.key in run.data.params and run.data.params[p.key] != p.value]
        fresh = [Param(p.key, p.value) for p in items if p.key not in run.data.params]
        self.client.log_batch(self.run_id, params=fresh, tags=changed)


def make_tracker(cfg, is_main: bool, metrics_file: Path, run_id: str | None = None, log=print) -> Tracker:
    """MLflow on global rank 0 when tracking is on (and mlflow importable); a no-op tracker elsewhere."""
    if not is_main or not cfg.tracking.enabled:
        return Tracker()
    try:
        import mlflow  # noqa: F401
    except ImportError:
        log("electra-dist: warning: tracking.enabled=true but mlflow is not installed; metrics go to "
            f"{metrics_file} only (install mlflow, or set tracking.enabled=false)")
        return Tracker()
    name = cfg.tracking.run_name or f"{cfg.flavor}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"flavor": cfg.flavor, "objective": cfg.objective.kind, "mlflow.note.content":
            f"electra_dist {cfg.flavor} ({cfg.objective.kind}), output {Path(cfg.output_dir).resolve()}"}
    return MLflowTracker(resolve_tracking_uri(cfg.tracking.uri), cfg.tracking.experiment, name, metrics_file,
                         run_id=run_id, tags=tags, log=log, flush_timeout=cfg.tracking.flush_timeout)


# ---- what a run logs --------------------------------------------------------------------------

def run_params(cfg, ds_config: dict, world: int, tp: int, dp: int) -> dict[str, Any]:
    params: dict[str, Any] = dict(cfg.flat())
    params.update({f"deepspeed.{k}": v for k, v in _flatten(ds_config)})
    params.update({"world_size": world, "tensor_parallel_size_resolved": tp, "data_parallel_size": dp})
    params.update(package_versions())
    commit = git_commit()
    if commit:
        params["git.commit"] = commit
    for var in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_JOB_NAME"):
        if os.environ.get(var):
            params[f"slurm.{var[len('SLURM_'):].lower()}"] = os.environ[var]
    return params


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"version.python": sys.version.split()[0]}
    for name in ("electra-dist", "torch", "deepspeed", "megatron-core", "webdataset", "sentencepiece", "mlflow",
                 "transformers"):
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def plot_run(metrics_file: Path, out: Path) -> Path | None:
    """loss and MFU (or tokens/s) against steps, from the JSONL, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["loss/generator"] for r in rows], label="generator (MLM)")
    axes[0].plot(steps, [r["loss/discriminator"] for r in rows], label="discriminator (RTD)")
    axes[0].set_yscale("log")
    axes[0].set_title("losses")
    axes[1].plot(steps, [r["acc/generator"] for r in rows], label="generator accuracy")
    axes[1].plot(steps, [r["acc/discriminator"] for r in rows], label="discriminator accuracy")
    axes[1].set_title("accuracy")
    key = "throughput/mfu" if "throughput/mfu" in rows[-1] else "throughput/tokens_per_s"
    axes[2].plot(steps, [r.get(key, float("nan")) for r in rows])
    axes[2].set_title(key)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
