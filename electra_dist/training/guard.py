"""A run's output directory is its own: one exclusive lock per directory, writable, with room for a
checkpoint — all checked in the first seconds, before the slow start-up.

The lock is an fcntl lock on OUTPUT/.lock held by the main rank for the whole run; the kernel drops
it when that process ends, however it ends (kill -9 included), so a stale lock cannot exist. The
file says who holds it (host, pid, SLURM job, start time) for the refusal's message. A second run
on the same directory (a double `sbatch`, a relaunch while orphaned ranks still run) is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from electra_dist.config import Config
from electra_dist.errors import UserError, check_writable, writing
from electra_dist.rundir import OutputDir
from electra_dist.training.flops import encoder_matmul_params


class OutputDirBusy(UserError):
    pass


class OutputDirLock:
    """Held from `acquire` to `release` (or the end of the process)."""

    def __init__(self, output_dir: str | Path):
        self.path = OutputDir(output_dir).lock
        self._file: IO[str] | None = None

    def acquire(self) -> OutputDirLock:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _describe(f.read())
            f.close()
            raise OutputDirBusy(
                f"output_dir={self.path.parent} is in use by another run ({holder}); a second run "
                "would interleave its checkpoints and metrics. Wait for it to end, stop it, or choose "
                "another --output-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "since": time.time(),
                    "slurm_job": os.environ.get("SLURM_JOB_ID"),
                }
            )
            + "\n"
        )
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
    except ValueError:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
    job = f", SLURM job {h['slurm_job']}" if h.get("slurm_job") else ""
    return f"host {h.get('host')}, pid {h.get('pid')}{job}, since {since}"


def checkpoint_bytes(cfg: Config) -> int:
    """About one checkpoint's size: fp32 weights, fp32 master copy and two Adam moments per parameter."""
    m = cfg.model
    params = (
        encoder_matmul_params(m.discriminator)
        + encoder_matmul_params(m.generator)
        + (m.vocab_size + m.max_position_embeddings) * m.embedding_size
    )
    return 16 * params


def prepare_output_dir(cfg: Config, main: bool) -> OutputDirLock | None:
    """Every rank: output_dir is writable with room for a checkpoint. The main rank: its lock."""
    check_writable(cfg.output_dir, checkpoint_bytes(cfg))
    return OutputDirLock(cfg.output_dir).acquire() if main else None


def data_identity(cfg: Config) -> dict:
    """What a checkpoint's data position means: the tokenizer, the packing, the shards. Recorded in
    every checkpoint; a resume on other data is refused (or allowed with --allow-data-change)."""
    from electra_dist.data.loader import resolve_shards

    urls, manifest = resolve_shards(cfg.data.shards)
    ident = {"seq_len": cfg.train.seq_len, "num_shards": len(urls)}
    if manifest is not None:
        ident.update(
            tokenizer_sha256=manifest["tokenizer"]["sha256"],
            packing=manifest.get("packing"),
            samples=manifest.get("samples"),
        )
    return ident


def data_changes(saved: dict | None, now: dict) -> list[str]:
    """'key: checkpoint X ≠ now Y' for every recorded key that differs."""
    return [
        f"{k}: checkpoint {saved[k]!r} ≠ now {now[k]!r}"
        for k in sorted(now)
        if saved and k in saved and saved[k] != now[k]
    ]
