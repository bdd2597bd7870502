"""Distributed training for real: several processes under torchrun or the deepspeed launcher, DeepSpeed
engines over gloo, megatron-core TP layers, real shards. Each layout must reproduce the one-process
baseline loss for loss (tiny model, dropout off, |Δ| ≤ 1e-5)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from electra_dist.tracking import read_metrics

from conftest import EXACT, ROOT, child_env, losses, metrics, start_training, train, wait_for

pytestmark = pytest.mark.slow


def test_tp2_equals_tp1(tmp_path, data, baseline, baseline_dir):
    train(tmp_path, data, "--max-steps", "10", *EXACT, "parallel.tensor_parallel_size=2", nproc=2)
    tp2 = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(baseline, tp2)) <= 1e-5, (baseline, tp2)
    # ZeRO-0 fp32, where the trainer measures the gradient norm itself: shards summed over the TP
    # group, replicated parameters counted once
    ref, norms = ([m["optim/grad_norm"] for m in metrics(d)] for d in (baseline_dir, tmp_path))
    assert all(r > 0 for r in ref) and max(abs(a - b) / a for a, b in zip(ref, norms)) < 1e-4, (ref, norms)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_dp2_equals_dp1_for_every_zero_stage(tmp_path, data, baseline, stage):
    train(
        tmp_path,
        data,
        "--max-steps",
        "10",
        *EXACT,
        "train.micro_batch_size=8",
        "--deepspeed",
        str(ROOT / "configs" / f"zero{stage}.json"),
        nproc=2,
    )
    dp2 = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(baseline, dp2)) <= 1e-5, (stage, baseline, dp2)
    from electra_dist.parallel import load_checkpoint_file

    files = sorted((tmp_path / "checkpoints").rglob("*.pt"))
    assert len(files) >= 3 and all(load_checkpoint_file(f) for f in files)  # every file loads weights-only
    _last_checkpoint_is_the_final_model(tmp_path)


def _last_checkpoint_is_the_final_model(out):
    """Any training checkpoint loads as a model (for export, fine-tuning): the last one IS the final model."""
    from electra_dist.interop import load_model

    final, _ = load_model(out / "final")
    last, cfg = load_model(out / "checkpoints")  # its `latest`, whatever layout wrote it
    assert cfg.train.max_steps == 10 or cfg.train.max_steps == 30
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), last.state_dict().values()))


def test_tp2_x_dp2_on_four_processes_learns(tmp_path, data):
    r = train(
        tmp_path,
        data,
        "--max-steps",
        "30",
        "train.micro_batch_size=8",
        "parallel.tensor_parallel_size=2",
        "--deepspeed",
        str(ROOT / "configs" / "zero2.json"),
        nproc=4,
    )
    assert "TP 2 × DP 2, ZeRO-2" in r.stdout
    loss = losses(tmp_path)
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 2.0, loss
    _last_checkpoint_is_the_final_model(tmp_path)
    step = tmp_path / "checkpoints" / "step00000030"
    r = subprocess.run(
        [sys.executable, "-m", "electra_dist", "export", "--checkpoint", str(step), "--out", str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert r.returncode == 0 and (tmp_path / "hf" / "discriminator" / "config.json").is_file(), r.stderr[-2000:]


def test_zero3_with_tensor_parallel_is_refused_at_start(tmp_path, data):
    r = train(
        tmp_path,
        data,
        "--max-steps",
        "2",
        "parallel.tensor_parallel_size=2",
        "--deepspeed",
        str(ROOT / "configs" / "zero3.json"),
        nproc=2,
        check=False,
    )
    assert r.returncode != 0 and "ZeRO stage 3 with parallel.tensor_parallel_size=2 is not supported" in r.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_deepspeed_launcher(tmp_path, data):
    r = train(
        tmp_path,
        data,
        "--max-steps",
        "3",
        "train.micro_batch_size=8",
        "--deepspeed",
        str(ROOT / "configs" / "zero2.json"),
        nproc=2,
        kind="deepspeed",
    )
    assert "DP 2, ZeRO-2" in r.stdout and len(losses(tmp_path)) == 3


@pytest.mark.parametrize("then", ["wait", "sigterm"])
def test_a_hung_rank_ends_the_run_with_a_message_within_the_timeouts(tmp_path, data, then):
    """Rank 1 is SIGSTOPped mid-run. Rank 0 must not sit in a collective for the old 30-minute default:
    it stops after parallel.collective_timeout, or — sent SIGTERM while blocked — after stop_timeout,
    each time saying what happened; the last complete checkpoint stays."""
    import time

    import psutil

    proc = start_training(
        tmp_path,
        data,
        "--max-steps",
        "100000",
        "train.micro_batch_size=8",
        "train.save_interval=2",
        "parallel.collective_timeout=12",
        "parallel.stop_timeout=2",
        nproc=2,
    )
    metrics_file = tmp_path / "metrics.jsonl"
    wait_for(lambda: len(read_metrics(metrics_file)) >= 3, proc)
    ranks = {int(p.environ()["RANK"]): p for p in psutil.Process(proc.pid).children() if "RANK" in p.environ()}
    ranks[1].send_signal(signal.SIGSTOP)
    start = time.monotonic()
    if then == "sigterm":
        time.sleep(1)
        ranks[0].send_signal(signal.SIGTERM)
    try:
        ranks[0].wait(timeout=40)
        took = time.monotonic() - start
    finally:
        ranks[1].kill()
    out, err = proc.communicate(timeout=60)
    if then == "wait":
        assert 12 <= took < 30, took
        assert "did not answer within parallel.collective_timeout=12s: one is hung, stopped or gone" in err, err[-3000:]
    else:
        assert took < 8, took
        assert "rank 0: got SIGTERM but the ranks did not agree to stop within parallel.stop_timeout=2s" in err, err[
            -3000:
        ]
    assert "newest complete" in err and (tmp_path / "checkpoints" / "latest").is_file()


# ---- resume on another number of GPUs -----------------------------------------------------------

# dropout ON; micro batch 4 and global batch 16 fit DP 1, 2 and 4 (accumulation 4, 2, 1)
ELASTIC = [
    "--max-steps",
    "12",
    "train.micro_batch_size=4",
    "train.global_batch_size=16",
    "train.save_interval=1000",
    "model.dropout=0.1",
    "model.attention_dropout=0.1",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    """12 steps on one rank, no break: the curve every re-sharded resume must reproduce."""
    from conftest import train_here

    out = tmp_path_factory.mktemp("uninterrupted")
    train_here(out, data, *ELASTIC)
    return losses(out)


def _segments(out, data, plan, *extra):
    """Run `plan` = [(until step, nproc, extra args)] one after the other in one output dir."""
    from conftest import train_here

    logs = []
    for until, nproc, args in plan:
        argv = [*ELASTIC, *extra, *args, *(["--until-step", str(until)] if until < 12 else [])]
        # one rank: in this process (no loader workers there, so none anywhere: resuming needs the same)
        r = train_here(out, data, *argv) if nproc == 1 else train(out, data, *argv, "data.num_workers=0", nproc=nproc)
        logs.append(r.stdout)
    assert [m["step"] for m in metrics(out)] == list(range(1, 13))
    return logs


def test_resume_on_dp_2_then_1_then_4_follows_the_uninterrupted_curve(tmp_path, data, uninterrupted):
    """ZeRO-1 and ZeRO-2 partitions (the same flat fp32 form) re-sharded across DP sizes and stages."""
    zero = [["--deepspeed", str(ROOT / "configs" / f"zero{stage}.json")] for stage in (1, 2)]
    logs = _segments(tmp_path, data, [(4, 2, zero[0]), (8, 1, zero[1]), (12, 4, zero[1])])
    assert "written by TP 1 × DP 2, ZeRO-1: re-sharded onto TP 1 × DP 1, ZeRO-2" in logs[1]
    assert "written by TP 1 × DP 1, ZeRO-2: re-sharded onto TP 1 × DP 4, ZeRO-2" in logs[2]
    got = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(uninterrupted, got)) <= 1e-5, (uninterrupted, got)


@pytest.mark.parametrize(
    "model",
    [[], ["model.architecture=modern", "model.embedding_size=64", "model.local_window=16",
          "objective.embedding_sharing=gdes"]],
    ids=["bert", "modern-gdes"],
)  # fmt: skip
def test_resume_on_tp_1_then_2_then_1_follows_the_uninterrupted_curve(tmp_path, data, model):
    """The padded vocabulary (to a multiple of 3 × TP size here) has 2001 rows at TP 1 and 2004 at TP 2.
    ModernBERT's block too: the fused QKV (head-major) and the GeGLU input (value and gate per feature)
    cut into whole heads and matching halves and put back together, with GDES's residual embeddings."""
    from conftest import train_here

    pad = ["model.pad_vocab_multiple=3", *model]
    train_here(tmp_path / "uninterrupted", data, *ELASTIC, *pad)
    uninterrupted = losses(tmp_path / "uninterrupted")
    tp2 = ["parallel.tensor_parallel_size=2"]
    logs = _segments(tmp_path / "run", data, [(4, 1, []), (8, 2, tp2), (12, 1, [])], *pad)
    tmp_path = tmp_path / "run"
    assert "written by TP 1 × DP 1, ZeRO-0: re-sharded onto TP 2 × DP 1, ZeRO-0" in logs[1]
    assert "written by TP 2 × DP 1, ZeRO-0: re-sharded onto TP 1 × DP 1, ZeRO-0" in logs[2]
    got = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(uninterrupted, got)) <= 1e-5, (uninterrupted, got)


def test_held_out_evaluation_is_the_same_on_two_ranks_as_on_one(tmp_path, data):
    from conftest import train_here

    shards, _ = data
    args = ["--max-steps", "6", *EXACT, "train.eval_interval=3", "train.eval_samples=100", f"data.eval_shards={shards}"]
    train_here(tmp_path / "one", data, *args)
    train(tmp_path / "two", data, *args, "train.micro_batch_size=8", nproc=2)  # 100 sequences: 50 per rank
    one, two = ({m["step"]: m for m in metrics(tmp_path / d) if "eval/loss" in m} for d in ("one", "two"))
    assert sorted(one) == sorted(two) == [3, 6]
    for step in one:
        for key in one[step]:
            if key.startswith("eval/") and key != "eval/seconds":  # the one that may differ: its cost
                assert abs(one[step][key] - two[step][key]) <= 1e-5 * max(1.0, abs(one[step][key])), (step, key)
