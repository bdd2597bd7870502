"""Who stops a process: the signals a cluster sends, and what a helper process does with them.

SLURM (scancel, the time limit, pre-emption) and `kill -TERM -PGID` signal EVERY process of a job
step at once: the launcher, the ranks and the ranks' data-loader workers. Only a rank can stop
well (agree with the other ranks, checkpoint, write PREEMPTED), so helpers ignore the stop signals
and the rank ends them itself. A rank started by a launcher also asks the kernel for SIGTERM when
that launcher dies (kill -9 of torchrun's agent), so it never runs on unsupervised.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import TracebackType

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


def quiet_handover_errors() -> None:
    """A loader worker killed while it fetches a tensor's file descriptor from its rank breaks the connection
    to multiprocessing's resource-sharer thread in the rank, which hands the error to sys.excepthook: a
    traceback beside the one line the trainer says about the dead worker. Those, and only those, are not
    printed (the thread goes on serving the other workers)."""
    previous = sys.excepthook
    if getattr(previous, "quiet_handover", False):
        return

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        files, frame = [], tb
        while frame is not None:
            files.append(frame.tb_frame.f_code.co_filename)
            frame = frame.tb_next
        sharer = any(f.endswith(os.path.join("multiprocessing", "resource_sharer.py")) for f in files)
        if not (sharer and issubclass(kind, (ConnectionError, EOFError))):
            previous(kind, error, tb)

    hook.quiet_handover = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def launched_by_a_launcher() -> bool:
    """torchrun (TORCHELASTIC_RUN_ID) or the deepspeed launcher (LOCAL_RANK without SLURM's srun)."""
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or ("LOCAL_RANK" in env and "SLURM_STEP_ID" not in env and "RANK" in env)


_GONE: list[str] = []  # which launcher process ended, once one has


def _proc(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, start time, command line) of a live process, from /proc; None when it is gone (or a
    zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # ended, not yet reaped by its parent: gone all the same
        return None
    return int(fields[1]), fields[19], cmd


def launcher_chain() -> list[tuple[int, str, str]]:
    """This rank's launcher processes, nearest first: the parent, and above it every process that is
    part of the launch (the deepspeed runner above its launch.py), as (pid, start time, command)."""
    chain, pid = [], os.getppid()
    while pid > 1 and (info := _proc(pid)) is not None:
        parent, started, cmd = info
        if chain and not any(m in cmd for m in ("deepspeed", "torch.distributed.run", "torchrun")):
            break
        name = (
            "deepspeed's launch.py"
            if "deepspeed.launcher.launch" in cmd
            else "the deepspeed runner"
            if "deepspeed" in cmd
            else "torchrun"
            if "torch.distributed.run" in cmd or "torchrun" in cmd
            else Path(cmd.split(" ")[0]).name
        )
        chain.append((pid, started, name))
        pid = parent
    return chain


def die_with_launcher(sig: int = signal.SIGTERM) -> int | None:
    """Ask Linux to send `sig` to this process when its parent (the launcher) exits, and watch the
    launch processes above it (the deepspeed runner: killing it used to orphan the ranks) the same
    way; returns the parent's pid, or None where no launcher started us."""
    if not launched_by_a_launcher():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    chain = launcher_chain()
    if not chain:  # it died before we asked: act as if told
        _GONE.append(f"the launcher (pid {os.getppid()}) is gone")
        os.kill(os.getpid(), sig)
        return None
    _WATCHING.set()
    threading.Thread(target=_watch_chain, args=(chain, sig), name="launcher-watch", daemon=True).start()
    return chain[0][0]


_WATCHING = threading.Event()


def _watch_chain(chain: list[tuple[int, str, str]], sig: int) -> None:
    import time

    while _WATCHING.is_set():
        for pid, started, cmd in chain:
            info = _proc(pid)
            if info is None or info[1] != started:
                if not _WATCHING.is_set():
                    return
                _GONE.append(f"the launcher ({cmd}, pid {pid}) is gone")  # cmd: its short name
                os.write(
                    2,
                    f"electra-dist: rank {os.environ.get('RANK', '?')}: {_GONE[0]}: stopping at the next "
                    "step with a checkpoint\n".encode(),
                )
                os.kill(os.getpid(), sig)
                return
        time.sleep(1.0)


def stop_watching_launcher() -> None:
    """The run is over: a launcher that ends now must not kill this process on its way out."""
    _WATCHING.clear()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def launcher_gone() -> str | None:
    return _GONE[0] if _GONE else None


def own_extensions_dir() -> Path:
    """torch's JIT-built ops (DeepSpeed's CPU communication op on a first start) in a directory of this
    Python environment's own: two virtualenvs no longer rebuild one directory in turn, each waiting on the
    other's lock. Says so when the build is still ahead (a minute or more, once)."""
    import hashlib
    import sys

    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path.home() / ".cache" / "torch_extensions" / f"electra-dist-{tag}")
    where = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if not any(where.glob("*/deepspeed_shm_comm*")) and not any(where.glob("deepspeed_shm_comm*")):
        logging.getLogger(__name__).info(
            f"the first start in this environment builds DeepSpeed's CPU communication op into "
            f"{where} (a minute or more, once)"
        )
    return where


def cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_threads() -> tuple[int, str]:
    """Threads for CPU math, and why: OMP_NUM_THREADS when set; else the CPUs this process may use (SLURM's
    --cpus-per-task, the affinity mask) less those other processes keep busy (the 1-minute load average).
    torch's default, every core of the machine, is 8× slower than one thread on a 2-core box that another
    job keeps busy (1.6 s against 0.2 s a fine-tuning step, measured)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    why = f"{mine} CPUs usable"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and 0 < int(slurm) < mine:
        mine, why = int(slurm), f"SLURM_CPUS_PER_TASK={slurm}"
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    if busy and (os.cpu_count() or mine) - busy < mine:
        free = max(1, (os.cpu_count() or mine) - busy)
        return free, f"{why}, load average {busy}: {free} free"
    return mine, why
