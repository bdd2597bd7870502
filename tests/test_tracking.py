"""MLflow tracking against the embedded default store and a REAL `mlflow server` on 127.0.0.1 (those
are `system` tests: a server process, training processes killed and resumed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from electra_dist.tracking import read_metrics

from conftest import child_env, free_port, launcher, metrics, run_args, train_here, wait_for

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


class Server:
    """`mlflow server` with a SQLite store and proxied artifacts, started and stopped here."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text()[-3000:])
            time.sleep(0.25)
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow")).start()
    yield s
    s.stop()


def run(out: Path, data, *args: str, cwd: Path, env: dict | None = None, nproc: int = 1, check: bool = True):
    env = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2", **(env or {})}
    cmd = launcher(nproc) + run_args(out, data, "tracking.enabled=true", *args)
    r = subprocess.run(cmd, capture_output=True, text=True, env={**child_env(), **(env or {})}, cwd=cwd, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def run_id(out: Path) -> str:
    return json.loads((out / "tracking.json").read_text())["run_id"]


def steps(client: MlflowClient, rid: str, key: str = "loss/total") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(rid, key))


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_embedded_default_store_logs_everything(tmp_path, data, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_here(
        out,
        data,
        "--max-steps",
        "6",
        "train.log_interval=2",
        "train.save_interval=100",
        "tracking.enabled=true",
        "tracking.tags=team=nlp,ablation=none",
        "tracking.log_hf_export=true",
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"},
    )
    db = tmp_path / "mlflow.db"
    assert db.is_file(), "the default store is ./mlflow.db, as MLflow's own default"
    client = MlflowClient(f"sqlite:///{db}")
    r = client.get_run(run_id(out))
    assert r.info.status == "FINISHED"
    assert r.data.tags["status"] == "finished" and r.data.tags["flavor"] == "debug"
    assert r.data.tags["objective"] == "electra"
    assert r.data.tags["team"] == "nlp" and r.data.tags["ablation"] == "none"
    assert r.info.run_name.startswith("debug ") and "max_steps=6" in r.info.run_name  # says what differs
    assert len(r.data.tags["mlflow.source.git.commit"]) == 40  # the checkout's commit
    p = r.data.params
    assert p["model.discriminator.num_heads"] == "2" and p["objective.discriminator_weight"] == "50.0"
    assert p["deepspeed.zero_optimization.stage"] == "0" and p["deepspeed.train_batch_size"] == "16"
    assert p["world_size"] == "1" and p["data_parallel_size"] == "1"
    assert "version.torch" in p and "version.deepspeed" in p and "version.megatron-core" in p
    assert steps(client, r.info.run_id) == [2, 4, 6]
    for key in ("loss/generator", "acc/discriminator", "throughput/tokens_per_s", "progress/flops"):
        assert steps(client, r.info.run_id, key) == [2, 4, 6]
    assert any(k.startswith("system/") for k in r.data.metrics), "MLflow system metrics"
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "deepspeed.json", "metrics.jsonl", "curves.png", "tokenizer", "hf"} <= arts
    tok = {a.path for a in client.list_artifacts(r.info.run_id, "tokenizer")}
    assert "tokenizer/spm.model" in tok
    hf = {a.path for a in client.list_artifacts(r.info.run_id, "hf/discriminator")}
    assert {
        "hf/discriminator/config.json",
        "hf/discriminator/model.safetensors",
        "hf/discriminator/tokenizer.json",
    } <= hf
    from electra_dist.commands.cli import main

    capsys.readouterr()
    assert (
        main(["compare", "--experiment", "electra-debug", "--metric", "loss/nope", "--out", str(tmp_path / "c.png")])
        == 2
    )
    assert "no run in 'electra-debug' logged 'loss/nope'; they have: " in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compare", "--experiment", "electra"]) == 2
    assert "no MLflow store at sqlite:///" in capsys.readouterr().err
    assert not (elsewhere / "mlflow.db").exists()  # a failed compare leaves no empty store behind


@pytest.mark.system
def test_real_server_two_runs_compared(tmp_path, data, server):
    env = {"MLFLOW_TRACKING_URI": server.url}
    a, b = tmp_path / "a", tmp_path / "b"
    run(
        a,
        data,
        "--max-steps",
        "8",
        "train.log_interval=2",
        "tracking.experiment=cmp",
        "tracking.run_name=lr-low",
        "optim.lr=0.0005",
        cwd=tmp_path,
        env=env,
    )
    run(
        b,
        data,
        "--max-steps",
        "8",
        "train.log_interval=2",
        "tracking.experiment=cmp",
        "tracking.run_name=lr-high",
        "optim.lr=0.003",
        cwd=tmp_path,
        env=env,
    )
    client = MlflowClient(server.url)
    assert steps(client, run_id(a)) == [2, 4, 6, 8]
    assert "metrics.jsonl" in {x.path for x in client.list_artifacts(run_id(b))}
    png = tmp_path / "cmp.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "electra_dist",
            "compare",
            "--experiment",
            "cmp",
            "--x",
            "flops",
            "--out",
            str(png),
            "--tracking-uri",
            server.url,
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "lr-low" in r.stdout and "lr-high" in r.stdout and "optim.lr" in r.stdout
    assert "0.0005" in r.stdout and "0.003" in r.stdout
    from PIL import Image

    img = Image.open(png)
    assert img.size[0] > 500 and len(img.convert("RGB").getcolors(1 << 20)) > 20  # a drawn plot, not blank
    r = subprocess.run(
        [sys.executable, "-m", "electra_dist", "compare", "--experiment", "nope", "--tracking-uri", server.url],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert r.returncode == 2 and "no experiment 'nope'" in r.stderr and "cmp" in r.stderr


@pytest.mark.system
def test_kill_and_resume_is_one_continuous_run(tmp_path, data, server):
    env = {**child_env(), "MLFLOW_TRACKING_URI": server.url}
    out = tmp_path / "run"
    args = ["--max-steps", "20", "train.save_interval=10", "tracking.enabled=true", "tracking.experiment=resume"]
    cmd = launcher(1) + run_args(out, data, *args)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True
    )
    mf = out / "metrics.jsonl"
    client = MlflowClient(server.url)

    def sent_past_the_checkpoint() -> bool:  # the sender is a background thread: under load it lags the JSONL
        return len(read_metrics(mf)) >= 11 and max(steps(client, run_id(out)) or [0]) > 10

    wait_for(sent_past_the_checkpoint, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # after the step-10 checkpoint, with steps 11.. already sent
    proc.wait()
    first = run_id(out)
    assert max(steps(client, first)) > 10
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert run_id(out) == first
    assert steps(client, first) == list(range(1, 21))  # no duplicate, no missing step
    hist = {m.step: m.value for m in client.get_metric_history(first, "loss/total")}
    assert [hist[s] for s in range(1, 21)] == [m["loss/total"] for m in metrics(out)]
    run_info = client.get_run(first)
    assert run_info.info.status == "FINISHED" and run_info.data.tags["status"] == "finished"
    assert run_info.data.tags["resumed_from"].endswith("step00000010")


def _start_tracked(out: Path, data, env: dict, *args: str) -> subprocess.Popen:
    """One training process with MLflow on, in the background (its own session), run from out's parent."""
    cmd = launcher(1) + run_args(out, data, "tracking.enabled=true", *args)
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out.parent, start_new_session=True
    )


@pytest.mark.system
def test_server_down_mid_run_never_stops_training(tmp_path, data):
    server = Server(tmp_path / "server").start()
    env = {**child_env(), "MLFLOW_TRACKING_URI": server.url}
    out = tmp_path / "run"
    proc = _start_tracked(
        out,
        data,
        env,
        "--max-steps",
        "60",
        "train.save_interval=1000",
        "tracking.experiment=outage",
        "tracking.flush_timeout=5",
    )
    try:
        mf = out / "metrics.jsonl"
        wait_for(lambda: len(read_metrics(mf)) >= 5, proc)
        server.stop()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        server.stop()
    assert proc.returncode == 0, stderr[-3000:]
    assert [m["step"] for m in metrics(out)] == list(range(1, 61))  # the JSONL is complete
    assert "is unreachable" in stdout  # warned (once)
    assert stdout.count("is unreachable") == 1
    assert "did not receive" in stdout and "electra-dist sync" in stdout  # the loss is stated
    # the server comes back: sync back-fills exactly what was missing
    server = Server(tmp_path / "server", port=server.port).start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "electra_dist", "sync", "--output-dir", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        client = MlflowClient(server.url)
        assert steps(client, run_id(out)) == list(range(1, 61))
        assert client.get_run(run_id(out)).info.status == "FINISHED"  # not left RUNNING
    finally:
        server.stop()


@pytest.mark.system
def test_a_server_that_comes_back_gets_every_point_and_the_final_status_without_sync(tmp_path, data):
    """Down from the first record for ~15 s (the sender's backoff has grown to 16 s), back, and the run is
    stopped at once: the end of the run retries now instead of sleeping out its backoff, so MLflow gets
    every step of the outage and the run's final status — without `sync`."""
    server = Server(tmp_path / "server").start()
    env = {**child_env(), "MLFLOW_TRACKING_URI": server.url}
    out = tmp_path / "run"
    proc = _start_tracked(
        out,
        data,
        env,
        "--max-steps",
        "100000",
        "train.save_interval=100000",
        "tracking.experiment=comeback",
        "train.log_interval=5",
        "tracking.flush_timeout=3",
    )
    try:
        mf = out / "metrics.jsonl"
        wait_for(lambda: len(read_metrics(mf)) >= 1, proc)
        server.stop()
        time.sleep(14)
        server = Server(tmp_path / "server", port=server.port).start()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-3000:]
        assert "is unreachable" in stdout and "did not receive" not in stdout, stdout[-3000:]
        client = MlflowClient(server.url)
        assert steps(client, run_id(out)) == [m["step"] for m in metrics(out)]  # the outage's steps too
        assert client.get_run(run_id(out)).info.status == "KILLED"  # pre-empted, not left RUNNING
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()


def test_a_misspelled_tracking_scheme_is_a_config_error_and_compare_says_a_server_is_down(tmp_path, data, cli):
    r = train_here(
        tmp_path, data, "--max-steps", "2", "tracking.enabled=true", "tracking.uri=htp://127.0.0.1:5000", check=False
    )
    assert r.returncode == 2 and "tracking.uri: 'htp://127.0.0.1:5000' has the scheme 'htp'" in r.stderr, r.stderr
    t0 = time.time()
    r = cli("compare", "--experiment", "x", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "does not answer" in r.stderr and time.time() - t0 < 15, r.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    r = cli(
        "sync",
        "--output-dir",
        tmp_path / "run",
        "--tracking-uri",
        f"http://127.0.0.1:{free_port()}",
        "--experiment",
        "x",
    )
    assert r.returncode == 2 and "does not answer" in r.stderr and time.time() - t0 < 30, r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_step_backfilled_and_queued_live_is_sent_once(tmp_path):
    """The back-fill (read from the JSONL when the tracker connects) and the live queue can hold the
    same step, and the JSONL's last line may be half written when the back-fill reads it: every
    step reaches MLflow exactly once."""
    from electra_dist.tracking.mlflow_tracker import MLflowTracker

    mf = tmp_path / "metrics.jsonl"
    mf.write_text(json.dumps({"step": 1, "time": 1.0, "loss/total": 3.0}) + "\n" + '{"step": 2, "ti')
    t = MLflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "dup", "dup", mf, system_metrics=False)
    t.log_metrics({"loss/total": 3.0}, 1)  # already back-filled from the JSONL
    t.log_metrics({"loss/total": 2.5}, 2)  # its JSONL line was torn when the back-fill read it
    assert t.close() == ""
    hist = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(t.run_id, "loss/total")
    assert sorted((m.step, m.value) for m in hist) == [(1, 3.0), (2, 2.5)]


@pytest.mark.system
def test_server_unreachable_from_the_start_then_sync_creates_the_whole_run(tmp_path, data):
    """No server for the whole run: tracking.json is still written, params/tags/artifacts and the final
    status are kept in tracking_pending.json, and `sync` later creates the run with all of it."""
    port = free_port()
    out = tmp_path / "run"
    run(
        out,
        data,
        "--max-steps",
        "6",
        "tracking.enabled=true",
        "tracking.experiment=never-reached",
        f"tracking.uri=http://127.0.0.1:{port}",
        "tracking.flush_timeout=2",
        cwd=tmp_path,
    )
    info = json.loads((out / "tracking.json").read_text())
    assert info["uri"] == f"http://127.0.0.1:{port}" and info["run_id"] is None
    kinds = [kind for kind, _ in json.loads((out / "tracking_pending.json").read_text())]
    assert "params" in kinds and "artifact" in kinds and kinds[-1] == "end"
    server = Server(tmp_path / "server", port=port).start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "electra_dist", "sync", "--output-dir", str(out)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "status finished" in r.stdout and not (out / "tracking_pending.json").exists()
        client = MlflowClient(server.url)
        rid = run_id(out)
        got = client.get_run(rid)
        assert got.info.status == "FINISHED" and got.data.tags["status"] == "finished"
        assert got.data.params["train.max_steps"] == "6" and got.data.tags["flavor"] == "debug"
        assert "config.yaml" in [a.path for a in client.list_artifacts(rid)]
        assert steps(client, rid) == list(range(1, 7))
        assert client.get_experiment(got.info.experiment_id).name == "never-reached"
    finally:
        server.stop()


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
@pytest.mark.parametrize("x", ["step", "flops"])
def test_the_compare_figure_keeps_its_legend_outside_the_curves_and_its_ticks_apart(x):
    """Long run names, several runs: the legend sits beside the axes (not over the curves or the y label)
    and no two x tick labels overlap on the log FLOPs axis."""
    from electra_dist.commands.compare import RunCurve, figure

    n = 60
    curves = [
        RunCurve(
            f"run{i:08d}",
            f"electra-small lr={lr} micro_batch_size=64 20261206-0{i}0000",
            "FINISHED",
            {},
            {},
            [float(s * 1e13 if x == "flops" else s) for s in range(1, n + 1)],
            [10.0 - s / (10 + i) for s in range(1, n + 1)],
        )
        for i, lr in enumerate((1e-4, 3e-4, 1e-3, 3e-3))
    ]
    fig = figure(curves, "loss/total", x, "electra: loss/total")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= box.x1 and not legend.overlaps(ax.yaxis.label.get_window_extent(renderer))
    labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    labels = [b for b in labels if box.x0 - 1 <= (b.x0 + b.x1) / 2 <= box.x1 + 1]
    assert len(labels) >= 2 and not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1 :])
    assert fig.get_size_inches()[0] * fig.dpi >= legend.x1 - 1  # the legend is on the canvas, not cut off
