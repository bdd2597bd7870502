"""Training for real on ONE rank: electra_dist/train.py's main() on real shards with a real DeepSpeed
engine (gloo, world 1), run in this process (`train_here`), or in its own process where a signal
or kill -9 must reach it (those are `slow`); results are read back from the metrics JSONL every run
writes. Runs of several processes (TP, DP, ZeRO stages, launchers) are in test_parallel.py."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import EXACT, SAMPLE, losses, metrics, start_training, train, train_here, wait_for


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_single_process_run_writes_metrics_checkpoint_and_final_model(tmp_path, data, baseline):
    assert len(baseline) == 10 and baseline[-1] < baseline[0]
    out = tmp_path / "run"
    r = train_here(out, data, "--max-steps", "4", "train.save_interval=2")
    assert "step       4/4 (100%, ETA 0:00:00) | loss" in r.stdout and "tok/s mfu —" in r.stdout  # progress
    assert "MFU not shown: no peak TFLOP/s known for 'cpu'" in r.stdout
    m = metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3, 4]
    for key in (
        "loss/total",
        "loss/generator",
        "loss/discriminator",
        "acc/generator",
        "acc/discriminator",
        "discriminator/precision",
        "discriminator/recall",
        "discriminator/replaced_fraction",
        "optim/lr",
        "optim/grad_norm",
        "throughput/tokens_per_s",
        "throughput/tflops_per_device",
        "memory/rss_gib",
    ):
        assert key in m[-1] and m[-1][key] == m[-1][key], key  # present, not NaN
    last = m[-1]
    assert abs(last["loss/total"] - (last["loss/generator"] + 50 * last["loss/discriminator"])) < 1e-3
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step00000002", "step00000004"]
    assert (out / "checkpoints" / "latest").read_text() == "step00000004"
    assert (out / "checkpoints" / "step00000004" / "COMPLETE").is_file()
    from electra_dist.interop import load_model

    model, cfg = load_model(out / "final")
    assert cfg.model.vocab_size == 2000 and model.padded_vocab == 2048


def test_an_mlm_run_records_no_discriminator_curves(tmp_path, data):
    r = train_here(tmp_path, data, "--max-steps", "2", "objective.kind=mlm")
    assert not [k for k in metrics(tmp_path)[-1] if "discriminator" in k] and " disc " not in r.stdout


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_gradient_accumulation_equals_one_big_batch(tmp_path, data, baseline):
    train_here(tmp_path, data, "--max-steps", "10", *EXACT, "train.micro_batch_size=4")
    acc = losses(tmp_path)
    assert max(abs(a - b) for a, b in zip(baseline, acc)) <= 1e-5


# ---- exact resume -------------------------------------------------------------------------

RESUME = ["train.save_interval=10", "model.dropout=0.1"]  # dropout ON: the RNG state must resume too


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("straight")
    train(out, data, "--max-steps", "20", *RESUME)
    return losses(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_resume_after_sigterm_mid_run_is_exact(tmp_path, data, straight, sig):
    proc = start_training(tmp_path, data, "--max-steps", "20", *RESUME, "train.save_interval=1000")
    metrics_file = tmp_path / "metrics.jsonl"
    wait_for(lambda: metrics_file.is_file() and len(metrics(tmp_path)) >= 7, proc)  # 7 records (+ a header)
    proc.send_signal(sig)
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


@pytest.mark.slow
def test_resume_after_kill_9_is_exact(tmp_path, data, straight):
    proc = start_training(tmp_path, data, "--max-steps", "20", *RESUME)
    latest = tmp_path / "checkpoints" / "latest"
    wait_for(lambda: latest.is_file(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.read_text() == "step00000010"
    r = train(tmp_path, data, "--max-steps", "20", *RESUME)
    assert "resumed from" in r.stdout and "step00000010" in r.stdout
    resumed = metrics(tmp_path)
    assert [m["step"] for m in resumed] == list(range(1, 21))  # steps logged after the checkpoint are dropped
    assert [m["loss/total"] for m in resumed] == straight


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_incomplete_checkpoint_is_not_resumed(tmp_path, data):
    train_here(tmp_path, data, "--max-steps", "4", "train.save_interval=2", "train.keep_last=5")
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step00000004" / "COMPLETE").unlink()  # as if a rank died while writing it
    r = train_here(tmp_path, data, "--max-steps", "5", "train.save_interval=2")
    assert "step00000002" in r.stdout and "resumed from" in r.stdout
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4, 5]


# ---- bad configs fail before any step -------------------------------------------------------


@pytest.mark.parametrize(
    "args,nproc,needle",
    [
        pytest.param(
            ["model.generator.num_heads=1", "parallel.tensor_parallel_size=2"],
            2,
            "model.generator.num_heads: 1 is not divisible by parallel.tensor_parallel_size=2",
            marks=pytest.mark.slow,
        ),
        (["parallel.tensor_parallel_size=2"], 1, "parallel.tensor_parallel_size=2 does not divide the world size 1"),
        pytest.param(
            ["train.global_batch_size=16", "train.micro_batch_size=16"],
            2,
            "train.global_batch_size: 16 is not a multiple of train.micro_batch_size (16) × data-parallel size (2)",
            marks=pytest.mark.slow,
        ),
        (["--data", "/nonexistent/shards"], 1, "data.shards"),
        (["train.seq_len=128", "model.max_position_embeddings=128"], 1, "set train.seq_len=64"),
    ],
)
def test_bad_configs_fail_before_training(tmp_path, data, args, nproc, needle):
    run = (lambda *a: train(*a, nproc=nproc, check=False)) if nproc > 1 else (lambda *a: train_here(*a, check=False))
    r = run(tmp_path, data, "--max-steps", "2", *args)
    assert r.returncode != 0, r.stdout
    assert needle in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_tokenizer_shard_mismatch_is_named(tmp_path, data):
    from electra_dist.data.tokenizer import train_tokenizer

    train_tokenizer([str(SAMPLE)], 1500, tmp_path / "other_tok", input_sentence_size=3000)
    r = train_here(tmp_path / "out", (data[0], tmp_path / "other_tok"), "--max-steps", "2", check=False)
    assert r.returncode == 2 and "tokenizer sha256" in r.stderr and "rebuild the shards" in r.stderr


def test_deepspeed_json_mismatches_are_listed_together(tmp_path, data):
    bad = tmp_path / "ds.json"
    bad.write_text(
        json.dumps(
            {
                "train_batch_size": 32,
                "gradient_clipping": 5.0,
                "bf16": {"enabled": True},
                "optimizer": {"type": "Adam"},
                "zero_optimization": {"stage": 2},
            }
        )
    )
    r = train_here(tmp_path / "out", data, "--max-steps", "2", "--deepspeed", str(bad), check=False)
    assert r.returncode == 2
    for needle in (
        "train_batch_size is 32 but the config implies 16",
        "gradient_clipping is 5.0",
        "bf16.enabled is True but train.precision='fp32'",
        "has an 'optimizer' block",
    ):
        assert needle in r.stderr, r.stderr


# ---- learning -------------------------------------------------------------------------------


@pytest.mark.slow
def test_200_step_debug_run_on_real_text_moves_like_electra(tmp_path, data):
    """Early ELECTRA: the discriminator's loss falls from ln 2 to the replaced-rate entropy and
    below, while the generator's MLM loss falls and its accuracy rises."""
    train(
        tmp_path,
        data,
        "--max-steps",
        "200",
        "train.log_interval=20",
        "train.save_interval=1000",
        "--config",
        "debug",
        "data.num_workers=1",
    )
    m = metrics(tmp_path)
    first, last = m[0], m[-1]
    assert first["loss/discriminator"] > 0.5 > last["loss/discriminator"]
    assert last["loss/generator"] < first["loss/generator"] - 1.5
    assert last["acc/generator"] > 0.03 > first["acc/generator"]
    assert 0.05 < last["discriminator/replaced_fraction"] < 0.16  # ≈ mask rate × (1 − generator accuracy)


def test_non_finite_loss_stops_the_run_naming_the_step_and_no_poisoned_checkpoint(tmp_path, data, monkeypatch):
    """The loss is checked on the device and read back at log steps and before every checkpoint:
    a NaN at step 3 stops the run at the step-4 checkpoint, naming step 3 and its samples; the
    step-2 checkpoint (finite) is the last one written."""
    from electra_dist.model import ElectraPretrainer
    from electra_dist.training.step import NonFiniteError

    real, calls = ElectraPretrainer.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # step 3 (one micro-batch per step)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(ElectraPretrainer, "forward", poisoned)
    with pytest.raises(NonFiniteError, match=r"first at step 3 on rank 0 .*held samples \S+"):
        train_here(tmp_path, data, "--max-steps", "8", "train.log_interval=8", "train.save_interval=2")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == ["step00000002"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step00000002"
    assert not (tmp_path / "final").exists()


# ---- faults around checkpoints ----------------------------------------------------------------


def test_a_signal_right_after_a_save_does_not_write_that_checkpoint_again(tmp_path, data, monkeypatch):
    """SIGTERM arriving during/just after the step-2 save: the run stops at step 2 and the complete
    step-2 checkpoint is left exactly as it was (a rewrite in place was the data-loss path)."""
    from electra_dist.training.checkpoints import CheckpointManager

    real, saved = CheckpointManager.save, []

    def save_then_signal(self, state):
        saved.append(state.step)
        path = real(self, state)
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM's signal, landing as the save finishes
        return path

    monkeypatch.setattr(CheckpointManager, "save", save_then_signal)
    r = train_here(tmp_path, data, "--max-steps", "8", "train.save_interval=2")
    assert "signal received" in r.stdout and saved == [2]
    assert (tmp_path / "PREEMPTED").is_file() and (tmp_path / "checkpoints" / "latest").read_text() == "step00000002"


def _model_file(ckpt):
    return next(f for f in ckpt.rglob("*model_states.pt"))


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
@pytest.mark.parametrize("damage", ["truncate", "flip_a_bit", "delete_rng"])
def test_a_damaged_newest_checkpoint_is_skipped_naming_why_and_the_run_resumes_from_the_one_before(
    tmp_path, data, damage
):
    train_here(tmp_path, data, "--max-steps", "4", "train.save_interval=2", "train.keep_last=5")
    newest = tmp_path / "checkpoints" / "step00000004"
    if damage == "truncate":  # kill -9 while the file was written
        _model_file(newest).write_bytes(b"")
    elif damage == "flip_a_bit":
        raw = bytearray(_model_file(newest).read_bytes())
        raw[len(raw) // 2] ^= 0x10
        _model_file(newest).write_bytes(bytes(raw))
    else:
        (newest / "rng_rank00000.pt").unlink()
    r = train_here(tmp_path, data, "--max-steps", "6", "train.save_interval=2", "train.keep_last=5")
    why = {
        "truncate": "holds 0 bytes where",
        "flip_a_bit": "does not match the SHA-256",
        "delete_rng": "rng_rank00000.pt is missing",
    }[damage]
    assert f"skipping checkpoint {newest}" in r.stderr and why in r.stderr, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "step00000002" in r.stdout
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_an_explicit_resume_path_that_fails_verification_is_refused(tmp_path, data):
    train_here(tmp_path, data, "--max-steps", "2", "train.save_interval=2")
    ckpt = tmp_path / "checkpoints" / "step00000002"
    _model_file(ckpt).write_bytes(b"")
    r = train_here(tmp_path / "other", data, "--max-steps", "4", "--resume", str(ckpt), check=False)
    assert r.returncode == 2 and "cannot be trusted" in r.stderr and "holds 0 bytes" in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_torn_last_metrics_line_does_not_stop_the_resume(tmp_path, data):
    train_here(tmp_path, data, "--max-steps", "4", "train.save_interval=2")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss/to')  # a crash in the middle of writing a record
    train_here(tmp_path, data, "--max-steps", "6", "train.save_interval=2")
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_zero0_reports_the_gradient_norm_and_a_non_finite_gradient_stops_the_run(tmp_path, data, monkeypatch):
    """With ZeRO-0 and a torch optimizer DeepSpeed keeps no gradient norm: the trainer measures it
    (it was logged as 0.0 and a NaN gradient went unnoticed while the loss stayed finite)."""
    import torch

    from electra_dist.model import ElectraPretrainer
    from electra_dist.training.step import NonFiniteError

    train_here(tmp_path / "ok", data, "--max-steps", "2")
    assert all(m["optim/grad_norm"] > 0 for m in metrics(tmp_path / "ok"))

    class NanGradient(torch.autograd.Function):  # the loss stays finite, its gradient does not
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    real, calls = ElectraPretrainer.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = NanGradient.apply(out.loss)
        return out

    monkeypatch.setattr(ElectraPretrainer, "forward", poisoned)
    with pytest.raises(NonFiniteError, match="first at step 3"):
        train_here(tmp_path / "nan", data, "--max-steps", "4", "train.log_interval=4")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_a_crafted_checkpoint_cannot_run_code_on_resume(tmp_path, data, monkeypatch):
    """Even with a COMPLETE marker whose checksums match (whoever crafted it rewrote them), every
    checkpoint file is unpickled weights-only: the one that would run code is refused by name."""
    import hashlib

    import torch

    monkeypatch.chdir(tmp_path)
    train_here(tmp_path, data, "--max-steps", "2", "train.save_interval=2")
    ckpt = tmp_path / "checkpoints" / "step00000002"
    for victim in (ckpt / "rng_rank00000.pt", _model_file(ckpt)):
        saved, saved_marker = victim.read_bytes(), (ckpt / "COMPLETE").read_text()
        state = torch.load(victim, weights_only=False)
        state["extra"] = _Payload()
        torch.save(state, victim)
        marker = json.loads((ckpt / "COMPLETE").read_text())
        marker["files"][victim.name] = {
            "bytes": victim.stat().st_size,
            "sha256": hashlib.sha256(victim.read_bytes()).hexdigest(),
        }
        (ckpt / "COMPLETE").write_text(json.dumps(marker))
        r = train_here(tmp_path, data, "--max-steps", "4", check=False)
        assert r.returncode == 2 and f"refusing to load {victim}" in r.stderr, r.stderr[-2000:]
        assert "os.system" in r.stderr or "posix.system" in r.stderr
        assert not (tmp_path / "PWNED").exists()
        victim.write_bytes(saved)
        (ckpt / "COMPLETE").write_text(saved_marker)


@pytest.mark.slow
def test_a_longer_max_steps_on_resume_continues_the_lr_down_instead_of_jumping_up(tmp_path, data):
    """Past warm-up, train.max_steps 30 → 40 on resume: the LR goes on from where it was, linearly to 0 at
    the new end (it used to jump up to the longer schedule's value); a finished run is not extended."""
    train_here(tmp_path, data, "--max-steps", "30", "--until-step", "25", "train.save_interval=1000")
    r = train_here(tmp_path, data, "--max-steps", "40", "train.save_interval=1000")
    assert (
        "train.max_steps 30 → 40: the LR multiplier goes on from 0.1667 at step 25 linearly to 0 at step 40" in r.stdout
    )
    lr = {m["step"]: m["optim/lr"] for m in metrics(tmp_path)}
    peak = 1e-3  # the debug flavor's optim.lr
    assert abs(lr[25] - peak * (1 - 25 / 30)) < 1e-9  # what the first schedule gave at the break
    assert all(lr[s + 1] < lr[s] for s in range(25, 40)), lr  # never back up
    assert abs(lr[26] - peak * (1 - 25 / 30) * (40 - 26) / (40 - 25)) < 1e-9 and lr[40] == 0.0
    r = train_here(tmp_path, data, "--max-steps", "50", check=False)
    assert r.returncode == 2 and "finished its LR schedule at step 40" in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_held_out_evaluation_is_logged_with_the_official_metrics(tmp_path, data):
    shards, _ = data
    r = train_here(
        tmp_path,
        data,
        "--max-steps",
        "5",
        "train.eval_interval=2",
        "train.eval_samples=64",
        f"data.eval_shards={shards}",
    )
    m = {rec["step"]: rec for rec in metrics(tmp_path)}
    for step in (2, 4, 5):  # every eval_interval steps and at the end
        assert {
            "eval/loss",
            "eval/generator_loss",
            "eval/generator_accuracy",
            "eval/sampled_accuracy",
            "eval/discriminator_loss",
            "eval/discriminator_accuracy",
            "eval/discriminator_precision",
            "eval/discriminator_recall",
            "eval/discriminator_auc",
        } <= set(m[step]), m[step]
    assert "eval/loss" not in m[3] and "| eval loss" in r.stdout
    e = m[5]
    assert abs(e["eval/loss"] - (e["eval/generator_loss"] + 50 * e["eval/discriminator_loss"])) < 1e-6
    assert 0 <= e["eval/sampled_accuracy"] < 1 and 0 <= e["eval/discriminator_recall"] <= 1
    assert 0 <= e["eval/generator_accuracy"] < 1 and e["eval/generator_loss"] > 0
    assert 0 < e["eval/discriminator_accuracy"] < 1
    assert 0 < e["eval/discriminator_auc"] < 1
    assert 0 < e["eval/seconds"] < 60


def test_the_histogram_auc_is_the_exact_auc_to_one_bin():
    import torch

    from electra_dist.training.evaluate import auc

    g = torch.Generator().manual_seed(0)
    pos, neg = torch.rand(3000, generator=g) ** 0.5, torch.rand(5000, generator=g)
    exact = (pos[:, None] > neg[None, :]).float().mean().item()

    def hist(x):
        return torch.zeros(1000).scatter_add_(0, (x * 1000).long().clamp(max=999), torch.ones(len(x)))

    assert abs(auc(hist(pos), hist(neg)) - exact) < 1e-4 and abs(exact - 2 / 3) < 0.01
