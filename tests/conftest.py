"""Shared fixtures and helpers: tiny configs, real text, real shards, and running the real trainer.

Tests never read ../shared. Layers (cheapest first; pick with -m):
  unit      pure functions and single modules in this process (no marker)
  single    one training process (no marker)
  slow      several processes: torchrun / the deepspeed launcher over gloo
  system    real SLURM, a real MLflow server, the quickstart, the Docker file
  gpu       needs CUDA (skipped without it)
`python -m pytest -q -m "not slow and not system" tests` is the quick tier.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from electra_dist.config import Config  # noqa: E402
from electra_dist.parallel import free_port  # noqa: E402,F401  (the one free-port helper)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "electra_dist" / "assets" / "sample.jsonl.gz"
TRAIN = str(ROOT / "electra_dist" / "train.py")


def requires_cuda(test):
    """Marked `gpu` and skipped without CUDA (litgpt's RunIf(min_cuda_gpus=1))."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


def tiny_config(**overrides) -> Config:
    """A 2-layer model that runs in milliseconds; dropout off so runs compare exactly."""
    base = {
        "model.vocab_size": 1000,
        "model.embedding_size": 32,
        "model.max_position_embeddings": 64,
        "model.discriminator.hidden_size": 64,
        "model.discriminator.num_heads": 4,
        "model.discriminator.intermediate_size": 128,
        "model.generator.hidden_size": 32,
        "model.generator.num_heads": 2,
        "model.generator.intermediate_size": 64,
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
        "train.seq_len": 64,
    }
    base.update(overrides)
    return Config.from_name("debug", **base).validate()


@pytest.fixture
def tiny() -> Config:
    return tiny_config()


@pytest.fixture(scope="session")
def real_documents() -> list[str]:
    """Real English text shipped with the package (public-domain sources)."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


SEQ = 64  # the shards the tests share are packed to 64 tokens


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    """A real SentencePiece model trained on the real sample text."""
    from electra_dist.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([str(SAMPLE)], 2000, out, lowercase=True)
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, tok_dir):
    """Real WebDataset shards of the sample text (seq 64, ~12 shards)."""
    from electra_dist.data.shards import build_shards

    out = tmp_path_factory.mktemp("shards")
    build_shards([str(SAMPLE)], tok_dir, SEQ, out, samples_per_shard=500, workers=1, progress=False, overwrite=True)
    return out


@pytest.fixture(scope="session")
def data(shard_dir, tok_dir):
    return shard_dir, tok_dir


# ---- running the real trainer ----------------------------------------------------------------

# tiny model, dropout off so different layouts can be compared number for number
TINY = [
    "--config",
    "debug",
    "model.discriminator.num_heads=2",
    "model.generator.num_heads=2",
    "train.log_interval=1",
    "data.num_workers=1",
    "train.seq_len=64",
    "model.max_position_embeddings=64",
    "tracking.enabled=false",
]  # tracking has its own tests (test_tracking.py)
EXACT = ["model.dropout=0", "model.attention_dropout=0", "data.dp_split=batch"]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launcher(nproc: int, kind: str = "torchrun") -> list[str]:
    if nproc == 1:
        return [sys.executable, TRAIN]
    if kind == "deepspeed":
        return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), TRAIN]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), TRAIN]


def run_args(out: Path, data, *args: str) -> list[str]:
    """train.py's arguments for a tiny-model run on the shared shards and tokenizer, into `out`."""
    shards, tok = data
    return ["--data", str(shards), "--tokenizer", str(tok), "--output-dir", str(out), *TINY, *args]


def train(
    out: Path, data, *args: str, nproc: int = 1, kind: str = "torchrun", check: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    """electra_dist/train.py on the shared shards, under a real launcher, to completion."""
    cmd = launcher(nproc, kind) + run_args(out, data, *args)
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


@contextlib.contextmanager
def one_rank(env: dict | None = None):
    """For code that starts torch.distributed in this process (one rank): a clean rank environment
    (plus `env`) before; the process group gone and the environment restored after, even when the
    code returned early on an error."""
    from electra_dist import parallel

    saved = dict(os.environ)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    os.environ.update(env or {})
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            parallel.destroy()
        os.environ.clear()
        os.environ.update(saved)


def train_here(out: Path, data, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """electra_dist/train.py's main() in THIS process (one rank, gloo), answered like `train`. Saves
    the ~6 s a new process spends importing torch, DeepSpeed and megatron-core."""
    # no loader worker processes: forking this test process, which holds the threads of earlier
    # in-process runs (OpenMP, compile workers), can crash the child; workers are tested where the
    # trainer runs in its own process (test_parallel, test_slurm) and in test_data
    return main_here(run_args(out, data, "data.num_workers=0", *args), check=check, env=env)


def main_here(argv: list[str], check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """electra_dist/train.py's main(argv) in this process (one rank), answered like subprocess.run."""
    from electra_dist import train as train_py

    stdout, stderr = io.StringIO(), io.StringIO()
    with one_rank(env), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = train_py.main(argv)
    r = subprocess.CompletedProcess(["train.py", *argv], rc, stdout.getvalue(), stderr.getvalue())
    if check and rc != 0:
        raise AssertionError(f"train.py {' '.join(argv)}\nexit {rc}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


@pytest.fixture
def cli(capsys):
    """`electra-dist ARGS...` in this process, answered like subprocess.run(capture_output=True)."""
    from electra_dist.commands.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's --help and usage errors
            rc = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)

    return run


@pytest.fixture
def one_rank_env():
    with one_rank():
        yield


def start_training(
    out: Path, data, *args: str, nproc: int = 1, env: dict | None = None, cwd: Path = ROOT
) -> subprocess.Popen:
    """The same, in the background (its own session, so a test can signal the whole group)."""
    cmd = launcher(nproc) + run_args(out, data, *args)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env(), **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the trainer")


def metrics(out: Path) -> list[dict]:
    """The metric records of a run (its header left out)."""
    from electra_dist.tracking import read_metrics

    return read_metrics(out / "metrics.jsonl")


def losses(out: Path) -> list[float]:
    return [m["loss/total"] for m in metrics(out)]


def one_tp2_dp2(tmp_path: Path, data, *args: str) -> dict[str, list[dict]]:
    """The same run on one process (here), on TP=2 and on DP=2 under ZeRO-3 (two processes each): each
    layout's metric records, to be compared number for number."""
    train_here(tmp_path / "one", data, *args)
    train(tmp_path / "tp2", data, *args, "parallel.tensor_parallel_size=2", nproc=2)
    zero3 = str(ROOT / "configs" / "zero3.json")
    train(tmp_path / "dp2", data, *args, "train.micro_batch_size=8", "--deepspeed", zero3, nproc=2)
    return {layout: metrics(tmp_path / layout) for layout in ("one", "tp2", "dp2")}


@pytest.fixture(scope="session")
def baseline_dir(tmp_path_factory, data):
    """TP=1, DP=1, 10 steps: the run every other layout must reproduce."""
    out = tmp_path_factory.mktemp("baseline")
    train_here(out, data, "--max-steps", "10", *EXACT)
    return out


@pytest.fixture(scope="session")
def baseline(baseline_dir):
    return losses(baseline_dir)


@pytest.fixture
def logged():
    """The lines the package logs during the test, as users see them (`electra-dist: …`)."""
    import logging

    from electra_dist import logs

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger, handler = logging.getLogger(logs.PACKAGE), Collect()
    handler.setFormatter(logs._Format())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
