"""Who stops a process: the signals a cluster sends, and what a helper process does with them.

SLURM (scancel, the time limit, pre-emption) and `kill -TERM -PGID` signal EVERY process of a job
step at once: the launcher, the ranks and the ranks' data-loader workers. Only a rank can stop
well (agree with the other ranks, checkpoint, write PREEMPTED), so helpers ignore the stop signals
and the rank ends them itself. A rank started by a launcher also asks the kernel for SIGTERM when
that launcher dies (kill -9 of torchrun's agent), so it never runs on unsupervised.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A data-loader worker's init: the rank that owns it stops it (torch's own worker SIGTERM handler
    would kill it first, and the rank would see a crash where it should see a stop). The stop signals
    are blocked; a thread takes each SIGTERM and ends the worker only when its rank sent it (the
    rank's shutdown, multiprocessing's terminate() at exit), so a worker can never outlive its rank."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        signal.set_wakeup_fd(-1)  # the rank's wakeup socket, inherited through fork: not ours to write
    except ValueError:
        pass
    threading.Thread(target=_end_when_the_rank_says, args=(parent,), name="rank-sigterm", daemon=True).start()


def _end_when_the_rank_says(rank: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == rank:
            os._exit(128 + signal.SIGTERM)


def launched_by_a_launcher() -> bool:
    """torchrun (TORCHELASTIC_RUN_ID) or the deepspeed launcher (LOCAL_RANK without SLURM's srun)."""
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or ("LOCAL_RANK" in env and "SLURM_STEP_ID" not in env
                                           and "RANK" in env)


def die_with_launcher(sig: int = signal.SIGTERM) -> int | None:
    """Ask Linux to send `sig` to this process when its parent (the launcher) exits; returns the
    launcher's pid, or None where this is not Linux or no launcher started us."""
    if not launched_by_a_launcher():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    parent = os.getppid()
    if parent == 1:  # it died before we asked: act as if told
        os.kill(os.getpid(), sig)
    return parent


def own_extensions_dir(say=print) -> Path:
    """torch's JIT-built ops (DeepSpeed's CPU communication op on a first start) in a directory of this
    Python environment's own: two virtualenvs no longer rebuild one directory in turn, each waiting on the
    other's lock. Says so when the build is still ahead (a minute or more, once)."""
    import hashlib
    import sys
    from pathlib import Path

    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path.home() / ".cache" / "torch_extensions" / f"electra-dist-{tag}")
    where = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if not any(where.glob("*/deepspeed_shm_comm*")) and not any(where.glob("deepspeed_shm_comm*")):
        say(f"electra-dist: the first start in this environment builds DeepSpeed's CPU communication op into "
            f"{where} (a minute or more, once)")
    return where


def cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()
