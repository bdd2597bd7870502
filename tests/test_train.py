"""Distributed training for real: DeepSpeed engines over gloo, megatron-core TP layers, real shards.

Each run is a real launcher (torchrun, the deepspeed launcher, or one plain process) running
electra_dist/train.py; results are read back from the metrics JSONL every run writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "electra_dist" / "train.py")

# tiny model, dropout off so different layouts can be compared number for number
TINY = ["--config", "debug", "model.discriminator.num_heads=2", "model.generator.num_heads=2",
        "train.log_interval=1", "data.num_workers=1", "train.seq_len=64", "model.max_position_embeddings=64",
        "tracking.enabled=false"]  # tracking has its own tests (test_tracking.py)
EXACT = ["model.dropout=0", "model.attention_dropout=0", "data.dp_split=batch"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cmd(nproc: int, launcher: str = "torchrun") -> list[str]:
    if nproc == 1:
        return [sys.executable, TRAIN]
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(_port()), TRAIN]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), TRAIN]


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out: Path, data, *args: str, nproc: int = 1, launcher: str = "torchrun", check: bool = True,
          timeout: int = 300) -> subprocess.CompletedProcess:
    shards, tok = data
    cmd = _cmd(nproc, launcher) + ["--data", str(shards), "--tokenizer", str(tok), "--output-dir", str(out),
                                   *TINY, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [m["loss/total"] for m in metrics(out)]


@pytest.fixture(scope="module")
def data(shard_dir, tok_dir):
    return shard_dir, tok_dir


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data):
    """TP=1, DP=1, 10 steps: the reference the layouts below must reproduce."""
    out = tmp_path_factory.mktemp("baseline")
    train(out, data, "--max-steps", "10", *EXACT)
    return losses(out)


def test_single_process_run_writes_metrics_checkpoint_and_final_model(tmp_path, data, baseline):
    assert len(baseline) == 10 and baseline[-1] < baseline[0]
    out = tmp_path / "run"
    train(out, data, "--max-steps", "4", "train.save_interval=2")
    m = metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3, 4]
    for key in ("loss/total", "loss/generator", "loss/discriminator", "acc/generator", "acc/discriminator",
                "discriminator/precision", "discriminator/recall", "discriminator/replaced_fraction", "optim/lr",
                "optim/grad_norm", "throughput/tokens_per_s", "throughput/tflops_per_device", "memory/rss_gib"):
        assert key in m[-1] and m[-1][key] == m[-1][key], key  # present, not NaN
    last = m[-1]
    assert abs(last["loss/total"] - (last["loss/generator"] + 50 * last["loss/discriminator"])) < 1e-3
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step00000002", "step00000004"]
    assert (out / "checkpoints" / "latest").read_text() == "step00000004"
    assert (out / "checkpoints" / "step00000004" / "COMPLETE").is_file()
    from electra_dist.checkpoint import load_model

    model, cfg = load_model(out / "final")
    assert cfg.model.vocab_size == 2000 and model.padded_vocab == 2048


def test_tp2_equals_tp1(tmp_path, data, baseline):
    train(tmp_path, data, "--max-steps", "10", *EXACT, "parallel.tensor_parallel_size=2", nproc=2)
    tp2 = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(baseline, tp2)) <= 1e-5, (baseline, tp2)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_dp2_equals_dp1_for_every_zero_stage(tmp_path, data, baseline, stage):
    train(tmp_path, data, "--max-steps", "10", *EXACT, "train.micro_batch_size=8",
          "--deepspeed", str(ROOT / "configs" / f"zero{stage}.json"), nproc=2)
    dp2 = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(baseline, dp2)) <= 1e-5, (stage, baseline, dp2)


def test_gradient_accumulation_equals_one_big_batch(tmp_path, data, baseline):
    train(tmp_path, data, "--max-steps", "10", *EXACT, "train.micro_batch_size=4")
    acc = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(baseline, acc)) <= 1e-5


def test_tp2_x_dp2_on_four_processes_learns(tmp_path, data):
    r = train(tmp_path, data, "--max-steps", "30", "train.micro_batch_size=8", "parallel.tensor_parallel_size=2",
              "--deepspeed", str(ROOT / "configs" / "zero2.json"), nproc=4)
    assert "TP 2 × DP 2, ZeRO-2" in r.stdout
    loss = losses(tmp_path)
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 2.0, loss


def test_zero3_with_tensor_parallel_is_refused_at_start(tmp_path, data):
    r = train(tmp_path, data, "--max-steps", "2", "parallel.tensor_parallel_size=2",
              "--deepspeed", str(ROOT / "configs" / "zero3.json"), nproc=2, check=False)
    assert r.returncode != 0 and "ZeRO stage 3 with parallel.tensor_parallel_size=2 is not supported" in r.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_deepspeed_launcher(tmp_path, data):
    r = train(tmp_path, data, "--max-steps", "3", "train.micro_batch_size=8",
              "--deepspeed", str(ROOT / "configs" / "zero2.json"), nproc=2, launcher="deepspeed")
    assert "DP 2, ZeRO-2" in r.stdout and len(losses(tmp_path)) == 3


# ---- exact resume -------------------------------------------------------------------------

RESUME = ["train.save_interval=10", "model.dropout=0.1"]  # dropout ON: the RNG state must resume too


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the trainer")


def _popen(out: Path, data, *args: str, nproc: int = 1) -> subprocess.Popen:
    shards, tok = data
    cmd = _cmd(nproc) + ["--data", str(shards), "--tokenizer", str(tok), "--output-dir", str(out), *TINY, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
                            start_new_session=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("straight")
    train(out, data, "--max-steps", "20", *RESUME)
    return losses(out)


def test_resume_after_sigterm_mid_run_is_exact(tmp_path, data, straight):
    proc = _popen(tmp_path, data, "--max-steps", "20", *RESUME, "train.save_interval=1000")
    metrics_file = tmp_path / "metrics.jsonl"
    _wait_for(lambda: metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 7, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "signal received" in out
    stopped = len(losses(tmp_path))
    assert 7 <= stopped < 20
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step{stopped:08d}"
    r = train(tmp_path, data, "--max-steps", "20", *RESUME, "train.save_interval=1000")
    assert "resumed from" in r.stdout
    resumed = metrics(tmp_path)
    assert [m["step"] for m in resumed] == list(range(1, 21))
    assert [m["loss/total"] for m in resumed] == straight


def test_resume_after_kill_9_is_exact(tmp_path, data, straight):
    proc = _popen(tmp_path, data, "--max-steps", "20", *RESUME)
    latest = tmp_path / "checkpoints" / "latest"
    _wait_for(lambda: latest.is_file(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.read_text() == "step00000010"
    r = train(tmp_path, data, "--max-steps", "20", *RESUME)
    assert "resumed from" in r.stdout and "step00000010" in r.stdout
    resumed = metrics(tmp_path)
    assert [m["step"] for m in resumed] == list(range(1, 21))  # steps logged after the checkpoint are dropped
    assert [m["loss/total"] for m in resumed] == straight


def test_resume_with_two_ranks_after_sigusr1_is_exact(tmp_path, data):
    """SLURM signals every task of the step; the torchrun agent is spared (see slurm/)."""
    import psutil

    args = ["--max-steps", "12", "train.micro_batch_size=8", "train.save_interval=1000", "model.dropout=0.1"]
    ref = tmp_path / "ref"
    train(ref, data, *args, nproc=2)
    part = tmp_path / "part"
    proc = _popen(part, data, *args, nproc=2)
    metrics_file = part / "metrics.jsonl"
    _wait_for(lambda: metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 4, proc)
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped = len(losses(part))
    assert 4 <= stopped < 12
    train(part, data, *args, nproc=2)
    assert [m["step"] for m in metrics(part)] == list(range(1, 13))
    assert losses(part) == losses(ref)


def test_incomplete_checkpoint_is_not_resumed(tmp_path, data):
    train(tmp_path, data, "--max-steps", "4", "train.save_interval=2", "train.keep_last=5")
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step00000004" / "COMPLETE").unlink()  # as if a rank died while writing it
    r = train(tmp_path, data, "--max-steps", "5", "train.save_interval=2")
    assert "step00000002" in r.stdout and "resumed from" in r.stdout
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4, 5]


# ---- bad configs fail before any step -------------------------------------------------------

@pytest.mark.parametrize("args,nproc,needle", [
    (["model.generator.num_heads=1", "parallel.tensor_parallel_size=2"], 2,
     "model.generator.num_heads: 1 is not divisible by parallel.tensor_parallel_size=2"),
    (["parallel.tensor_parallel_size=2"], 1, "parallel.tensor_parallel_size=2 does not divide the world size 1"),
    (["train.global_batch_size=16", "train.micro_batch_size=16"], 2,
     "train.global_batch_size: 16 is not a multiple of train.micro_batch_size (16) × data-parallel size (2)"),
    (["--data", "/nonexistent/shards"], 1, "data.shards"),
    (["train.seq_len=128", "model.max_position_embeddings=128"], 1, "set train.seq_len=64"),
])
def test_bad_configs_fail_before_training(tmp_path, data, args, nproc, needle):
    r = train(tmp_path, data, "--max-steps", "2", *args, nproc=nproc, check=False)
    assert r.returncode != 0, r.stdout
    assert needle in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tokenizer_shard_mismatch_is_named(tmp_path, data):
    from conftest import SAMPLE
    from electra_dist.data.tokenizer import train_tokenizer

    train_tokenizer([str(SAMPLE)], 1500, tmp_path / "other_tok", input_sentence_size=3000)
    r = train(tmp_path / "out", (data[0], tmp_path / "other_tok"), "--max-steps", "2", check=False)
    assert r.returncode == 2 and "tokenizer sha256" in r.stderr and "rebuild the shards" in r.stderr


def test_deepspeed_json_mismatches_are_listed_together(tmp_path, data):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": 32, "gradient_clipping": 5.0, "bf16": {"enabled": True},
                               "optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}))
    r = train(tmp_path / "out", data, "--max-steps", "2", "--deepspeed", str(bad), check=False)
    assert r.returncode == 2
    for needle in ("train_batch_size is 32 but the config implies 16", "gradient_clipping is 5.0",
                   "bf16.enabled is True but train.precision='fp32'", "has an 'optimizer' block"):
        assert needle in r.stderr, r.stderr


# ---- pieces -----------------------------------------------------------------------------------

def test_lr_schedule_is_the_official_one():
    from electra_dist.trainer import lr_multiplier

    assert lr_multiplier(0, 10, 100) == 0.0
    assert lr_multiplier(5, 10, 100) == pytest.approx(0.5 * 0.95)
    assert lr_multiplier(10, 10, 100) == pytest.approx(0.9)
    assert lr_multiplier(100, 10, 100) == 0.0


def test_no_weight_decay_on_layernorm_and_bias(tiny):
    from electra_dist.model import ElectraPretrainer
    from electra_dist.trainer import param_groups

    m = ElectraPretrainer(tiny.model, tiny.objective)
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(n.endswith("weight") and "norm" not in n.lower() for n in (names[id(p)] for p in decay["params"]))
    assert all(n.endswith("bias") or "norm" in n.lower() or "LayerNorm" in n
               for n in (names[id(p)] for p in no_decay["params"]))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_flops_per_token_matches_the_design():
    from electra_dist.config import Config
    from electra_dist.flops import flops_per_token, peak_tflops

    large = Config.from_name("electra-large")
    f = flops_per_token(large.model, 512, 0.25)
    assert abs(f / 1e9 - 2.17) < 0.01
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0 and peak_tflops("cpu", "fp32") is None


def test_200_step_debug_run_on_real_text_moves_like_electra(tmp_path, data):
    """Early ELECTRA: the discriminator's loss falls from ln 2 to the replaced-rate entropy and
    below, while the generator's MLM loss falls and its accuracy rises."""
    train(tmp_path, data, "--max-steps", "200", "train.log_interval=20", "train.save_interval=1000",
          "--config", "debug", "data.num_workers=1")
    m = metrics(tmp_path)
    first, last = m[0], m[-1]
    assert first["loss/discriminator"] > 0.5 > last["loss/discriminator"]
    assert last["loss/generator"] < first["loss/generator"] - 1.5
    assert last["acc/generator"] > 0.03 > first["acc/generator"]
    assert 0.05 < last["discriminator/replaced_fraction"] < 0.16  # ≈ mask rate × (1 − generator accuracy)
