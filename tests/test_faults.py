"""What a cluster does to a job, done for real: a signal during start-up, a killed launcher, a second
run on the same directory, a full or read-only disk (a real tmpfs), resumes on other data or another
model, damaged records and checkpoints, a killed loader worker. Each ends in a checkpoint or one line
that names the path, never a traceback. (SIGTERM to every process of a SLURM job step: test_slurm.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import SAMPLE, metrics, start_training, train, train_here, wait_for


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False):
    """A real, small file system (a full disk is a full disk): root only."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}{',ro' if read_only else ''}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _catches(pid: int, sig: int) -> bool:
    """The process has a handler for `sig` (its SigCgt mask in /proc)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


# ---- signals and launchers ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_signal_during_start_up_stops_at_the_first_step_boundary_with_preempted(tmp_path, data):
    proc = start_training(tmp_path, data, "--max-steps", "20")
    try:
        wait_for(lambda: _catches(proc.pid, signal.SIGUSR1), proc, timeout=60)  # main() has begun: imports ahead
        assert not (tmp_path / "metrics.jsonl").exists()  # still starting up
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "signal received (SIGUSR1): nothing trained since the checkpoint at step 0" in out
    assert json.loads((tmp_path / "PREEMPTED").read_text())["step"] == 0
    assert metrics(tmp_path) == [] and not (tmp_path / "checkpoints" / "latest").exists()


def test_a_rank_that_learns_of_the_stop_from_another_still_says_its_launcher_is_gone():
    """A killed launcher signals every rank at once; the rank whose handler has not run yet when the ranks
    agree (rank 0, which logs) must still say why, not only "by another rank" (the system test below
    missed the launcher's name that way under load)."""
    from electra_dist.training.signals import StopSignals

    signals = StopSignals(watch_launcher=False)
    try:
        assert signals.describe() == "by another rank"
        signals.launcher = os.getppid() + 1_000_000  # its launcher was another process: it is gone
        assert signals.describe() == f"by another rank: the launcher (pid {os.getppid() + 1_000_000}) is gone"
        signals._on_signal(signal.SIGTERM, None)
        assert signals.describe().startswith("SIGTERM: the launcher (pid ")
    finally:
        signals.restore()


@pytest.mark.slow
def test_killing_the_launcher_stops_its_ranks_with_a_checkpoint(tmp_path, data):
    """kill -9 of torchrun's agent: its ranks get SIGTERM from the kernel, agree, checkpoint, write
    PREEMPTED and exit (they used to run on unsupervised to the end); the resume continues."""
    proc = start_training(
        tmp_path, data, "--max-steps", "400", "train.save_interval=1000", "train.micro_batch_size=8", nproc=2
    )
    wait_for(lambda: len(metrics(tmp_path)) >= 4, proc, timeout=180)
    ranks = [p for p in psutil.Process(proc.pid).children() if "train.py" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    proc.kill()
    try:
        out, err = proc.communicate(timeout=120)  # the pipes close when the ranks are gone
        gone, alive = psutil.wait_procs(ranks, timeout=60)
        assert not alive, [p.pid for p in alive]
    finally:
        for p in ranks:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert "the launcher (" in out + err and ") is gone" in out + err, err[-3000:]
    step = json.loads((tmp_path / "PREEMPTED").read_text())["step"]
    assert 4 <= step < 400 and (tmp_path / "checkpoints" / "latest").read_text() == f"step{step:08d}"
    r = train(tmp_path, data, "--max-steps", str(step + 2), "train.micro_batch_size=8", nproc=2)
    assert "resumed from" in r.stdout and [m["step"] for m in metrics(tmp_path)] == list(range(1, step + 3))


@pytest.mark.slow
def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(tmp_path, data):
    first = start_training(tmp_path, data, "--max-steps", "2000", "train.save_interval=1000")
    try:
        wait_for(lambda: len(metrics(tmp_path)) >= 2, first, timeout=120)
        t0 = time.time()
        r = train(tmp_path, data, "--max-steps", "2000", check=False)
        assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"is in use by another run (host {os.uname().nodename}, pid {first.pid}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and time.time() - t0 < 30  # before DeepSpeed's imports
        before = len(metrics(tmp_path))
        assert [m["step"] for m in metrics(tmp_path)] == list(range(1, before + 1))  # nothing interleaved
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 0
    r = train(tmp_path, data, "--max-steps", "2000", "--until-step", str(len(metrics(tmp_path)) + 1))
    assert "resumed from" in r.stdout  # the lock went with the first run's process


@pytest.mark.slow
def test_a_killed_loader_worker_is_one_line(tmp_path, data):
    proc = start_training(tmp_path, data, "--max-steps", "2000", "data.num_workers=2", "train.save_interval=1000")
    try:
        wait_for(lambda: len(metrics(tmp_path)) >= 2, proc, timeout=120)
        worker = next(p for p in psutil.Process(proc.pid).children())
        worker.kill()
        out, err = proc.communicate(timeout=60)  # it used to hang at exit, joining a worker that ignored TERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]
    assert "electra-dist: a data-loader worker died: DataLoader worker (pid" in err and "Traceback" not in err


_HANDOVER = """
import os, socket, sys, time
from multiprocessing import resource_sharer
if sys.argv[1] == "quiet":
    from electra_dist.procs import quiet_handover_errors
    quiet_handover_errors()
r, w = os.pipe()
resource_sharer.DupFd(r)  # a tensor's fd registered for a worker to fetch: the sharer thread listens
s = socket.socket(socket.AF_UNIX)
s.connect(resource_sharer._resource_sharer._address)
s.close()  # the worker is killed before it answers the handshake
time.sleep(1.0)
alive = resource_sharer._resource_sharer._thread.is_alive()
raise SystemExit(f"{alive}") if sys.argv[2] == "exit" else ValueError("other")
"""


@pytest.mark.slow  # three interpreters: seconds
def test_a_worker_killed_mid_handover_prints_no_traceback_in_its_rank():
    """The killed-worker test's rare second failure, made certain: a worker dies during multiprocessing's
    file-descriptor handover, whose sharer thread hands the broken connection to sys.excepthook. Quiet
    (as the loader sets it), that prints nothing, the thread serves on, and other errors still print."""
    import sys

    from conftest import child_env

    def run(*argv):
        return subprocess.run([sys.executable, "-c", _HANDOVER, *argv], capture_output=True, text=True,
                              env=child_env(), timeout=60)  # fmt: skip

    loud, quiet, other = run("loud", "exit"), run("quiet", "exit"), run("quiet", "raise")
    assert "Traceback" in loud.stderr and "resource_sharer.py" in loud.stderr, loud.stderr  # what it was
    assert quiet.stderr == "True\n", quiet.stderr
    assert "ValueError: other" in other.stderr and "resource_sharer.py" not in other.stderr, other.stderr


# ---- disks ---------------------------------------------------------------------------------------


def test_a_read_only_output_dir_is_refused_at_once_naming_it(tmp_path, data):
    with tmpfs(tmp_path / "ro", "4m", read_only=True) as ro:
        r = train_here(ro / "run", data, "--max-steps", "2", check=False)
    assert r.returncode == 2
    assert f"electra-dist: {ro / 'run'}: the file system is read-only" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_no_room_for_a_checkpoint_is_refused_at_once(tmp_path, data):
    with tmpfs(tmp_path / "small", "1m") as small:
        r = train_here(small / "run", data, "--max-steps", "2", check=False)
    assert r.returncode == 2 and f"output_dir={small / 'run'}: 0.00 GiB free, but one checkpoint needs" in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_disk_that_fills_mid_run_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, data):
    from electra_dist.training.checkpoints import complete_checkpoints, verify

    with tmpfs(tmp_path / "disk", "14m") as disk:
        r = train_here(
            disk / "run", data, "--max-steps", "50", "train.save_interval=1", "train.keep_last=50", check=False
        )
        assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
        assert "no space left on the device" in r.stderr and str(disk / "run") in r.stderr, r.stderr
        assert "iostream error" not in r.stderr.split("no space left")[0].splitlines()[-1]
        kept = complete_checkpoints(disk / "run" / "checkpoints")
        assert kept and all(verify(c) is None for c in kept)


# ---- resumes that must not happen silently -----------------------------------------------------------


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_resume_on_other_shards_or_another_tokenizer_is_refused_naming_both(tmp_path, data):
    from electra_dist.data.shards import build_shards
    from electra_dist.data.tokenizer import train_tokenizer

    shards, tok = data
    out = tmp_path / "run"
    train_here(out, data, "--max-steps", "2", "train.save_interval=2")
    regrouped = tmp_path / "regrouped"  # the same samples, in other shards
    build_shards([str(SAMPLE)], tok, 64, regrouped, samples_per_shard=700, workers=1, progress=False)
    r = train_here(out, (regrouped, tok), "--max-steps", "4", check=False)
    assert r.returncode == 2 and "was trained on other data; num_shards: checkpoint" in r.stderr, r.stderr
    r = train_here(out, (regrouped, tok), "--max-steps", "4", "--allow-data-change")
    assert "resuming on other data (--allow-data-change)" in r.stdout and len(metrics(out)) == 4

    other_tok = tmp_path / "tok2"  # same vocabulary size, another tokenizer: the case that went through
    train_tokenizer([str(SAMPLE)], 2000, other_tok, lowercase=False)
    other = tmp_path / "other"
    build_shards([str(SAMPLE)], other_tok, 64, other, samples_per_shard=700, workers=1, progress=False)
    r = train_here(out, (other, other_tok), "--max-steps", "6", check=False)
    assert r.returncode == 2 and "tokenizer_sha256: checkpoint" in r.stderr, r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_another_model_under_the_same_output_dir_is_one_line(tmp_path, data):
    train_here(tmp_path, data, "--max-steps", "2", "train.save_interval=2")
    r = train_here(tmp_path, data, "--max-steps", "4", "model.discriminator.intermediate_size=96", check=False)
    assert r.returncode == 2 and "holds a model of another shape (size mismatch for" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_damaged_metrics_line_is_kept_aside_not_dropped(tmp_path, data):
    train_here(tmp_path, data, "--max-steps", "4", "train.save_interval=4")
    f = tmp_path / "metrics.jsonl"
    lines = f.read_text().splitlines()
    lines[2] = lines[2][:25]  # step 2's record, torn in the middle of the file
    f.write_text("\n".join(lines) + "\n")
    r = train_here(tmp_path, data, "--max-steps", "6")
    assert f"{f}: 1 line(s) that are not records (line 3) kept in {f}.bad" in r.stdout
    assert (tmp_path / "metrics.jsonl.bad").read_text() == f"{f}:3: {lines[2]}\n"
    assert [m["step"] for m in metrics(tmp_path)] == [1, 3, 4, 5, 6]


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_damaged_complete_checkpoint_is_skipped_then_written_anew(tmp_path, data):
    from electra_dist.training.checkpoints import verify

    train_here(tmp_path, data, "--max-steps", "4", "train.save_interval=2", "train.keep_last=5")
    step4 = tmp_path / "checkpoints" / "step00000004"
    rng = step4 / "rng_rank00000.pt"
    raw = rng.read_bytes()
    rng.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one bit pattern changed: checksum fails
    r = train_here(tmp_path, data, "--max-steps", "6", "train.save_interval=2", "train.keep_last=5")
    assert "skipping checkpoint" in r.stderr and "resumed from" in r.stdout and "step00000002" in r.stdout
    assert "already complete" not in r.stdout and verify(step4) is None  # step 4 written again
    assert list((tmp_path / "checkpoints").glob("step00000004.damaged-*"))


@pytest.mark.slow  # a training run: 9 s warm, 22 s with a cold compile cache
def test_a_complete_marker_listing_no_files_does_not_verify(tmp_path, data):
    from electra_dist.training.checkpoints import verify

    train_here(tmp_path, data, "--max-steps", "2", "train.save_interval=2")
    ckpt = tmp_path / "checkpoints" / "step00000002"
    marker = json.loads((ckpt / "COMPLETE").read_text())
    (ckpt / "COMPLETE").write_text(json.dumps({**marker, "files": {}}))
    assert verify(ckpt) == "its COMPLETE marker lists no files to verify"


# ---- data found wrong before step 1, never mid-run -----------------------------------------------------


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("missing", "listed but missing"),
        ("zero-filled", "not a tar shard"),
        ("another kind of file", "not a tar shard"),
        ("cut short", "bytes where the manifest lists"),
        ("zero-filled eval shard", "not a tar shard"),
        ("empty manifest", "manifest.json: not a readable manifest"),
    ],
)
def test_damaged_shards_are_named_before_step_1(tmp_path, data, damage, needle):
    import shutil

    shards, tok = data
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    victim = sorted(bad.glob("eval-*.tar" if "eval" in damage else "shard-*.tar"))[-1]
    size = victim.stat().st_size
    if damage == "missing":
        victim.unlink()
    elif "zero-filled" in damage:
        victim.write_bytes(bytes(size))
    elif damage == "another kind of file":
        victim.write_bytes((b"<html>not a shard</html>\n" * size)[:size])
    elif damage == "cut short":
        victim.write_bytes(victim.read_bytes()[: size // 2])
    else:
        (bad / "manifest.json").write_bytes(b"")
    t0 = time.time()
    r = train_here(tmp_path / "run", (bad, tok), "--max-steps", "2", check=False)
    assert r.returncode == 2, r.stdout[-2000:]
    assert needle in r.stderr and (victim.name in r.stderr or "manifest" in damage), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert time.time() - t0 < 30


def test_utf16_and_nul_heavy_input_are_named(tmp_path, cli, real_documents):
    text = "\n\n".join(real_documents[:20])
    utf16 = tmp_path / "notes.txt"
    utf16.write_text(text, encoding="utf-16")
    r = cli("tokenizer", "train", "--input", utf16, "--vocab-size", "500", "--out", tmp_path / "tok")
    assert r.returncode == 2 and f"{utf16}: this file is UTF-16" in r.stderr and "iconv" in r.stderr, r.stderr
    bare = tmp_path / "bare.txt"
    bare.write_bytes(text.encode("utf-16-le"))
    r = cli("tokenizer", "train", "--input", bare, "--vocab-size", "500", "--out", tmp_path / "tok")
    assert r.returncode == 2 and f"{bare}: 50 % of its first 4096 bytes are NUL" in r.stderr, r.stderr


def test_a_truncated_gzip_keeps_what_was_read_and_says_so(tmp_path):
    from electra_dist.data.text import TextStats, iter_documents

    whole = list(iter_documents([SAMPLE], TextStats()))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 2])
    stats = TextStats()
    docs = list(iter_documents([cut], stats))
    assert 0 < len(docs) < len(whole) and docs == whole[: len(docs)]
    assert stats.truncated_files == 1 and stats.to_dict()["truncated_files"] == 1
    assert stats.problems[-1].startswith(f"{cut}: damaged or truncated gzip after line {len(docs)}")


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_export_and_finetune_never_write_over_other_files(tmp_path, data, cli):
    train_here(tmp_path / "run", data, "--max-steps", "2")
    final = tmp_path / "run" / "final"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    r = cli("export", "--checkpoint", final, "--out", mine)
    assert r.returncode == 2 and f"--out {mine} already holds 1 entry (notes.txt)" in r.stderr, r.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # nothing written
    assert cli("export", "--checkpoint", final, "--out", mine, "--force").returncode == 0
    assert (mine / "discriminator" / "config.json").is_file() and (mine / "notes.txt").is_file()
    fresh = tmp_path / "hf"
    assert cli("export", "--checkpoint", final, "--out", fresh).returncode == 0
    assert cli("export", "--checkpoint", final, "--out", fresh).returncode == 0  # again: an earlier export
    r = cli("finetune", "--model", fresh / "discriminator", "--train", "x.jsonl", "--test", "y.jsonl", "--out", fresh)
    assert r.returncode == 2 and "is not an earlier output of `electra-dist finetune`" in r.stderr, r.stderr


def test_a_tokenizer_whose_files_disagree_is_one_line(tmp_path, data):
    import shutil

    shards, tok = data
    mixed = tmp_path / "tok"
    shutil.copytree(tok, mixed)
    specials = json.loads((mixed / "special_tokens.json").read_text())
    (mixed / "special_tokens.json").write_text(json.dumps({**specials, "sha256": "0" * 64}))
    r = train_here(tmp_path / "run", (shards, mixed), "--max-steps", "2", check=False)
    assert r.returncode == 2 and "special_tokens.json was written for another spm.model" in r.stderr, r.stderr
    (mixed / "spm.model").write_bytes(b"not a model")
    r = train_here(tmp_path / "run", (shards, mixed), "--max-steps", "2", check=False)
    assert r.returncode == 2 and "spm.model: not a SentencePiece model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_wrong_shard_path_is_refused_within_seconds(tmp_path, data):
    """A new process, as a user starts it: the mistake is found before DeepSpeed's imports (it took
    over two minutes once), and said in one line."""
    shards, tok = data
    t0 = time.time()
    r = train(tmp_path, (tmp_path / "no-such-shards", tok), "--max-steps", "2", check=False)
    took = time.time() - t0
    assert r.returncode == 2 and "data.shards" in r.stderr and "no-such-shards" in r.stderr, r.stderr[-2000:]
    assert took < 15, took


@pytest.mark.slow
@pytest.mark.parametrize("how", ["Ctrl-C", "kill <launcher pid>"])
def test_the_deepspeed_launcher_stops_its_ranks_with_a_checkpoint(tmp_path, data, how):
    """Ctrl-C (SIGINT to the terminal's whole process group) and `kill` of the deepspeed runner alone (which
    left launch.py and the ranks running): every rank checkpoints, PREEMPTED is written, nobody is left."""
    from conftest import child_env, launcher, run_args

    cmd = launcher(2, "deepspeed") + run_args(
        tmp_path,
        data,
        "--max-steps",
        "2000",
        "train.micro_batch_size=8",
        "data.num_workers=2",
        "train.save_interval=1000",
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True
    )
    tree: list[psutil.Process] = []
    try:
        wait_for(lambda: len(metrics(tmp_path)) >= 3, proc, timeout=180)
        tree = psutil.Process(proc.pid).children(recursive=True)
        if how == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.terminate()
        out, err = proc.communicate(timeout=120)
        gone, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, [p.cmdline()[:3] for p in alive]
    finally:
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
    step = json.loads((tmp_path / "PREEMPTED").read_text())["step"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step{step:08d}", out[-2000:] + err[-2000:]
    assert "DataLoader worker" not in out + err, [
        line for line in (out + err).splitlines() if "DataLoader" in line or "Error" in line
    ]
    assert "signal received (" in out + err and "return code = -" not in out + err  # none died by the signal
    if how != "Ctrl-C":
        assert "the launcher (the deepspeed runner, pid" in out + err
