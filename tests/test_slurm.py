"""The sbatch scripts on a REAL SLURM (Debian's slurm-wlm), started and stopped by these tests.

Two emulated nodes (two slurmd on this host), 4 CPUs and 2 fake GPUs each. The very same
slurm/pretrain_large.sh users submit runs here with CPU overrides (debug flavor, gloo, fp32).
Skipped where SLURM cannot be started (not root, no apt-get) — except in CI (CI=true), where
they must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from electra_dist.tracking import read_metrics

from conftest import ROOT, SAMPLE, losses, metrics

pytestmark = pytest.mark.system

LOCAL = ROOT / "slurm" / "local"
STATE = Path(os.environ.get("ELECTRA_TEST_SLURM_DIR", "/tmp/electra-dist-test-slurm"))


def _can_start() -> str | None:
    if os.geteuid() != 0:
        return "not root: cannot install and start slurmctld/slurmd"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "no apt-get and no slurmctld on this machine"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _can_start()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM tests must run in CI: {reason}")
        pytest.skip(reason)
    env = {**os.environ, "SLURM_CI_DIR": str(STATE), "SLURM_CI_NODES": "2", "SLURM_CI_CPUS": "4", "SLURM_CI_GPUS": "2"}
    r = subprocess.run(["bash", str(LOCAL / "start_slurm.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the cluster's config is its own (not /etc/slurm): every sbatch/squeue/scancel here finds it so
    conf = STATE / "etc" / "slurm.conf"
    assert f"export SLURM_CONF={conf}" in r.stdout, r.stdout[-2000:]
    system = Path("/etc/slurm/slurm.conf")
    assert not (system.is_file() and "start_slurm.sh" in system.read_text()), "start_slurm.sh wrote /etc/slurm"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield STATE
    subprocess.run(["bash", str(LOCAL / "stop_slurm.sh")], capture_output=True, text=True, env=env, timeout=300)


def job_env(**extra: str) -> dict[str, str]:
    # the emulated nodes' GPUs are files: training on CPU where GPUs were allocated is allowed explicitly
    env = {
        **os.environ,
        "REPO": str(ROOT),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ELECTRA_DIST_ALLOW_CPU": "1",
    }
    env.update(extra)
    return env


def sbatch(
    script: str, *flags: str, env: dict, cwd: Path, wait: bool = True, timeout: int = 600, args: tuple[str, ...] = ()
) -> tuple[int, str]:
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *flags, str(ROOT / "slurm" / script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    job = r.stdout.strip().split(";")[0].splitlines()[0] if r.stdout.strip() else ""
    return r.returncode, job


def job_log(cwd: Path, name: str, job: str) -> str:
    files = list(cwd.glob(f"{name}-{job}*.out"))
    return "\n".join(f.read_text() for f in files)


def final_state(job: str) -> str:
    """From JobCompLoc: the job record leaves squeue 5 s after the end (MinJobAge)."""
    text = (STATE / "log" / "jobcomp.log").read_text() if (STATE / "log" / "jobcomp.log").is_file() else ""
    states = [line for line in text.splitlines() if f"JobId={job} " in line]
    return states[-1].split("JobState=")[1].split()[0] if states else ""


def train_env(tmp_path: Path, data, out: Path, extra: str, **more: str) -> dict[str, str]:
    shards, tok = data
    return job_env(
        CONFIG="debug",
        DS_CONFIG=str(ROOT / "configs" / "zero2.json"),
        DATA=str(shards),
        TOKENIZER=str(tok),
        OUTPUT_DIR=str(out),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        EXTRA_ARGS=" ".join(
            [
                "train.precision=fp32",
                "train.seq_len=64",
                "model.max_position_embeddings=64",
                "model.discriminator.num_heads=2",
                "model.generator.num_heads=2",
                "data.num_workers=1",
                "train.micro_batch_size=8",
                "train.log_interval=1",
                "tracking.experiment=slurm",
                extra,
            ]
        ),
        **more,
    )


CPU_FLAGS = ["--cpus-per-task=2", "--time=00:15:00"]


def test_pretrain_large_script_runs_to_completion(cluster, tmp_path, data):
    out = tmp_path / "run"
    rc, job = sbatch(
        "pretrain_large.sh",
        "--nodes=1",
        "--gpus-per-node=2",
        *CPU_FLAGS,
        env=train_env(tmp_path, data, out, "train.max_steps=6 train.save_interval=3"),
        cwd=tmp_path,
    )
    log = job_log(tmp_path, "electra-large", job)
    assert rc == 0, log[-4000:]
    assert "world 2 = TP 1 × DP 2, ZeRO-2" in log and "rendezvous ci-n1:" in log
    port = int(log.split("rendezvous ci-n1:")[1].split()[0])
    assert port != 29500 and 20000 <= port < 30200
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoints" / "latest").read_text() == "step00000006"
    assert (out / "final" / "model.pt").is_file() and not (out / "PREEMPTED").exists()
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        json.loads((out / "tracking.json").read_text())["run_id"]
    )
    assert run.info.status == "FINISHED" and run.data.params["slurm.job_id"] == job


# both interrupted jobs below run exactly this (tracking aside) and must reproduce one uninterrupted job
REQUEUE_ARGS = "train.max_steps=16 train.save_interval=1000 model.dropout=0.1 data.num_workers=2"


@pytest.fixture(scope="module")
def uninterrupted_job(cluster, tmp_path_factory, data) -> list[float]:
    tmp_path = tmp_path_factory.mktemp("slurm-ref")
    ref = tmp_path / "ref"
    rc, ref_job = sbatch(
        "pretrain_large.sh",
        "--nodes=1",
        "--gpus-per-node=2",
        *CPU_FLAGS,
        env=train_env(tmp_path, data, ref, REQUEUE_ARGS + " tracking.enabled=false"),
        cwd=tmp_path,
    )
    assert rc == 0, job_log(tmp_path, "electra-large", ref_job)[-3000:]
    return losses(ref)


def test_preemption_in_a_container_with_container_paths_checkpoints_requeues_and_resumes_exactly(
    cluster, tmp_path, data, uninterrupted_job
):
    """USR1 as --signal=USR1@300 sends it, to a job whose steps run in a container (an apptainer-style
    runtime: a stub that applies real bind mounts) with DATA, TOKENIZER and OUTPUT_DIR paths only the
    container sees: checkpoint, PREEMPTED (found by the batch script on the host through the mounts),
    requeue, and the resumed job's curve and MLflow run are the uninterrupted job's, bit for bit."""
    shards, tok = data
    inside = Path(f"/electra-ctr-{os.getpid()}")  # exists only as a mount point inside the container
    runs = tmp_path / "runs"
    runs.mkdir()
    image = tmp_path / "electra-dist.sif"
    image.write_text("stand-in image")
    container = dict(
        CONTAINER_IMAGE=str(image),
        CONTAINER_RUNTIME=str(ROOT / "tests" / "assets" / "stub-container-runtime"),
        CONTAINER_MOUNTS=f"{shards.parent}:{inside}/data,{runs}:{inside}/runs",
    )
    env = {
        **train_env(tmp_path, data, Path(f"{inside}/runs/out"), REQUEUE_ARGS, **container),
        "DATA": f"{inside}/data/{shards.name}",
        "TOKENIZER": f"{inside}/data/{tok.name}",
    }
    out = runs / "out"
    try:
        rc, job = sbatch(
            "pretrain_large.sh", "--nodes=1", "--gpus-per-node=2", *CPU_FLAGS, env=env, cwd=tmp_path, wait=False
        )
        assert rc == 0 and job
        log = _preempt_and_wait_for_the_end(tmp_path, job, out / "metrics.jsonl", lines=6)
        assert final_state(job) == "COMPLETED", log[-4000:]
        assert f"in container {image} (" in log and "stub-container-runtime: image" in log and "--nv yes" in log
        assert "signal received" in log and "restart 1" in log and "requeueing" in log and "resumed from" in log
        assert [m["step"] for m in metrics(out)] == list(range(1, 17))
        assert losses(out) == uninterrupted_job  # bit-identical to the uninterrupted job
        assert not list(inside.glob("runs/out/*"))  # on the host, the container path is an empty mount point
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        rid = json.loads((out / "tracking.json").read_text())["run_id"]
        assert sorted(m.step for m in client.get_metric_history(rid, "loss/total")) == list(range(1, 17))
        assert client.get_run(rid).info.status == "FINISHED"

        # an output dir that no mount covers could never be requeued: refused up front, saying why
        bad = {**env, "OUTPUT_DIR": "/nowhere-on-the-host/out"}
        rc, job = sbatch("pretrain_large.sh", "--nodes=1", "--gpus-per-node=2", *CPU_FLAGS, env=bad, cwd=tmp_path)
        assert rc != 0 and "lies only inside the container" in job_log(tmp_path, "electra-large", job)
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def test_sigterm_to_every_process_of_the_steps_requeues_and_resumes_exactly(cluster, tmp_path, data, uninterrupted_job):
    """What scancel --signal=TERM, a pre-emption's grace period and the kill at the time limit do: SIGTERM
    to every process of the job's steps at once — torchrun's agent, the ranks, their two loader workers
    each. The workers leave stopping to their rank, the agent leaves it to the ranks: checkpoint,
    PREEMPTED, requeue, and the resumed job's curve is the uninterrupted one."""
    args = REQUEUE_ARGS + " tracking.enabled=false"
    out = tmp_path / "run"
    rc, job = sbatch(
        "pretrain_large.sh",
        "--nodes=1",
        "--gpus-per-node=2",
        *CPU_FLAGS,
        env=train_env(tmp_path, data, out, args),
        cwd=tmp_path,
        wait=False,
    )
    assert rc == 0 and job
    log = _preempt_and_wait_for_the_end(tmp_path, job, out / "metrics.jsonl", lines=5, signal="TERM")
    assert final_state(job) == "COMPLETED", log[-4000:]
    assert "signal received (SIGTERM)" in log and "restart 1" in log, log[-4000:]
    assert "DataLoader worker" not in log and "Traceback" not in log, log[-4000:]
    assert [m["step"] for m in metrics(out)] == list(range(1, 17))
    assert losses(out) == uninterrupted_job


def _preempt_and_wait_for_the_end(
    tmp_path: Path, job: str, metrics_file: Path, lines: int, name: str = "electra-large", signal: str = "USR1"
) -> str:
    """Once `metrics_file` has `lines` records, send `signal` to every process of the job's steps (USR1 as
    --signal=USR1@300 does); wait until it has requeued itself and ended (making it eligible at once:
    SLURM waits ~2 min otherwise); return its log."""
    deadline = time.time() + 300
    while not (len(read_metrics(metrics_file)) >= lines):
        assert time.time() < deadline, job_log(tmp_path, name, job)[-3000:]
        time.sleep(0.2)
    subprocess.run(["scancel", f"--signal={signal}", job], check=True)
    deadline = time.time() + 300
    while "requeueing" not in job_log(tmp_path, name, job):
        assert time.time() < deadline, job_log(tmp_path, name, job)[-3000:]
        time.sleep(0.5)
    pending_since = None
    while True:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "PENDING":
            pending_since = pending_since or time.time()
            # not within the second of the requeue: slurmd compares the new job credential's time with
            # the revocation of the old one at one-second resolution ("Job credential revoked")
            if time.time() - pending_since > 2:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        if state == "" and final_state(job):
            return job_log(tmp_path, name, job)
        assert time.time() < deadline + 300, state
        time.sleep(1)


def test_the_documented_cpu_try_of_the_batch_scripts_passes(cluster, tmp_path, data):
    """README's way to try sbatch on a CPU box: slurm/local/try_cpu.sh runs slurm/pretrain_small.sh as
    written, with only what a CPU node needs overridden (no GPUs, 2 CPUs, debug in fp32)."""
    shards, tok = data
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "DS_CONFIG", "EXTRA_ARGS", "OUTPUT_DIR")}
    env.update(
        DATA=str(shards),
        TOKENIZER=str(tok),
        PYTHONPATH=str(ROOT),
        EXTRA_ARGS="train.max_steps=4 train.precision=fp32 data.num_workers=1 train.seq_len=64 "
        "model.max_position_embeddings=64 model.discriminator.num_heads=2 model.generator.num_heads=2 "
        "tracking.enabled=false",
    )
    r = subprocess.run(
        ["bash", str(LOCAL / "try_cpu.sh")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "exited 0" in r.stdout and metrics(tmp_path / "runs" / "try-cpu")[-1]["step"] == 4
    assert (tmp_path / "runs" / "try-cpu" / "final" / "model.pt").is_file()


def test_gpus_allocated_but_invisible_are_refused_naming_both(cluster, tmp_path, data):
    """A job given GPUs whose processes see none (a container without --nv, a CPU build of torch) must not
    quietly train on CPU."""
    out = tmp_path / "run"
    env = {**train_env(tmp_path, data, out, "train.max_steps=2 tracking.enabled=false"), "ELECTRA_DIST_ALLOW_CPU": "0"}
    rc, job = sbatch("pretrain_large.sh", "--nodes=1", "--gpus-per-node=2", *CPU_FLAGS, env=env, cwd=tmp_path)
    log = job_log(tmp_path, "electra-large", job)
    assert rc != 0 and "the scheduler allocated GPUs to this process (SLURM_" in log, log[-3000:]
    assert "torch sees none" in log and "ELECTRA_DIST_ALLOW_CPU=1" in log and not metrics(out)


def test_two_nodes_rendezvous_world_size_four(cluster, tmp_path, data):
    out = tmp_path / "run"
    rc, job = sbatch(
        "pretrain_large.sh",
        "--nodes=2",
        "--gpus-per-node=2",
        *CPU_FLAGS,
        env=train_env(tmp_path, data, out, "train.max_steps=4 parallel.tensor_parallel_size=2 tracking.enabled=false"),
        cwd=tmp_path,
    )
    log = job_log(tmp_path, "electra-large", job)
    assert rc == 0, log[-4000:]
    assert "nodes ci-n[1-2] (2 × 2 processes)" in log
    assert "world 4 = TP 2 × DP 2, ZeRO-2" in log
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]


def test_preprocess_array_builds_the_same_shards(cluster, tmp_path):
    from electra_dist.data.loader import iter_shard, resolve_shards
    from electra_dist.data.shards import build_shards, read_manifest

    tok, shards = tmp_path / "tok", tmp_path / "shards"
    env = job_env(
        INPUT=str(SAMPLE),
        TOKENIZER=str(tok),
        DATA=str(shards),
        VOCAB_SIZE="2000",
        SEQ_LEN="64",
        SAMPLES_PER_SHARD="300",
        WORKERS="1",
        CHUNK_MB="0.1",
    )
    flags = ["--cpus-per-task=1", "--time=00:10:00", "--kill-on-invalid-dep=yes"]
    rc, tok_job = sbatch("preprocess.sh", *flags, env=env, cwd=tmp_path, wait=False, args=("tokenizer",))
    assert rc == 0 and tok_job
    rc, array_job = sbatch(
        "preprocess.sh",
        *flags,
        f"--dependency=afterok:{tok_job}",
        "--array=0-2",
        env=env,
        cwd=tmp_path,
        wait=False,
        args=("shards",),
    )
    assert rc == 0 and array_job
    rc, merge_job = sbatch(
        "preprocess.sh", *flags, f"--dependency=afterok:{array_job}", env=env, cwd=tmp_path, args=("merge",)
    )
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert rc == 0, logs[-4000:]
    assert [final_state(j) for j in (tok_job, merge_job)] == ["COMPLETED", "COMPLETED"], logs[-4000:]
    m = read_manifest(shards)
    assert m["num_parts"] == 3 and {s["name"][:9] for s in m["shards"]} == {"shard-000", "shard-001", "shard-002"}

    single = tmp_path / "single"
    build_shards(
        [str(SAMPLE)],
        tok,
        64,
        single,
        samples_per_shard=300,
        workers=1,
        progress=False,
        chunk_chars=int(0.1 * (1 << 20)),
    )

    def rows(d):
        return sorted(tuple(r.tolist()) for u in resolve_shards(str(d))[0] for _, r in iter_shard(u))

    assert rows(shards) == rows(single) and len(rows(single)) == read_manifest(single)["samples"]


def _printing_slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose srun/scontrol only print, so a batch script's own logic runs anywhere; none
    of the scripts' knobs set but `extra`."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text('#!/bin/bash\necho "srun $*"\n')
    (stub / "scontrol").write_text("#!/bin/bash\necho gpu-node-1\n")
    for f in stub.iterdir():
        f.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("EXTRA_ARGS", "CONFIG", "DS_CONFIG", "DATA", "TOKENIZER", "OUTPUT_DIR", "MASTER_PORT")
    }
    env.update(PATH=f"{stub}:{env['PATH']}", SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8", REPO=str(ROOT), **extra)
    return env


def test_default_submission_launches_with_the_documented_defaults(tmp_path):
    """`sbatch slurm/pretrain_large.sh` with nothing set: srun/scontrol are stubbed to print, so
    this checks the script's own logic (defaults, rendezvous, no unset-variable errors) anywhere."""
    env = _printing_slurm_env(tmp_path, SLURM_JOB_NODELIST="gpu-node-[1-8]", SLURM_NNODES="8")
    for script, want in (
        (
            "pretrain_large.sh",
            [
                "--nnodes=8",
                "--nproc_per_node=8",
                "configs/zero2.json",
                "configs/electra_large.yaml",
                "runs/electra-large",
            ],
        ),
        ("pretrain_small.sh", ["configs/zero0.json", "configs/electra_small.yaml", "runs/electra-small"]),
    ):
        r = subprocess.run(
            ["bash", str(ROOT / "slurm" / script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
        )
        assert r.returncode == 0, r.stdout + r.stderr
        launch = next(line for line in r.stdout.splitlines() if line.startswith("srun "))
        assert "--rdzv_endpoint=gpu-node-1:" in launch and ":29500" not in launch
        for w in want:
            assert w in launch, (w, launch)
        assert 'bash -c trap "" USR1' in launch and "--resume auto" in launch


def test_pyxis_launch_line_keeps_the_checkout_mount_and_workdir(tmp_path):
    """CONTAINER_MOUNTS adds to the checkout's mount (it used to replace it); CONTAINER_WORKDIR picks the
    image's code. srun/scontrol stubbed to print, as above."""
    env = _printing_slurm_env(
        tmp_path,
        SLURM_JOB_NODELIST="gpu-node-1",
        SLURM_NNODES="1",
        CONTAINER_IMAGE="/shared/e.sqsh",
        CONTAINER_MOUNTS="/shared/runs:/runs",
        OUTPUT_DIR="/runs/large",
        CONTAINER_WORKDIR="/opt/electra_dist",
    )
    r = subprocess.run(
        ["bash", str(ROOT / "slurm" / "pretrain_large.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    launch = next(line for line in r.stdout.splitlines() if line.startswith("srun "))
    assert f"--container-mounts={ROOT}:{ROOT},/shared/runs:/runs" in launch
    assert "--container-image=/shared/e.sqsh" in launch and "--container-workdir=/opt/electra_dist" in launch
    r = subprocess.run(
        ["bash", str(ROOT / "slurm" / "pretrain_large.sh")],
        capture_output=True,
        text=True,
        env={**env, "OUTPUT_DIR": "/elsewhere/large"},
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 2 and "OUTPUT_DIR=/elsewhere/large lies only inside the container" in r.stderr


def test_preprocess_runs_in_the_container_with_container_paths(cluster, tmp_path):
    from electra_dist.data.shards import read_manifest

    inside = Path(f"/electra-ctr-pre-{os.getpid()}")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SAMPLE, work / SAMPLE.name)
    image = tmp_path / "electra-dist.sif"
    image.write_text("stand-in image")
    env = job_env(
        INPUT=f"{inside}/{SAMPLE.name}",
        TOKENIZER=f"{inside}/tok",
        DATA=f"{inside}/shards",
        VOCAB_SIZE="2000",
        SEQ_LEN="64",
        SAMPLES_PER_SHARD="300",
        WORKERS="1",
        CONTAINER_IMAGE=str(image),
        CONTAINER_RUNTIME=str(ROOT / "tests" / "assets" / "stub-container-runtime"),
        CONTAINER_MOUNTS=f"{work}:{inside}",
    )
    flags = ["--cpus-per-task=1", "--time=00:10:00"]
    try:
        for stage in ("tokenizer", "shards", "merge"):
            rc, job = sbatch("preprocess.sh", *flags, env=env, cwd=tmp_path, args=(stage,))
            log = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
            assert rc == 0 and final_state(job) == "COMPLETED", log[-4000:]
        assert "stub-container-runtime: image" in log
        assert (work / "tok" / "spm.model").is_file() and read_manifest(work / "shards")["samples"] > 1000
    finally:
        shutil.rmtree(inside, ignore_errors=True)
