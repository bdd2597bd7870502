"""One line instead of a traceback: what went wrong, on which path, and what to do.

Every command (and train.py) ends through `report`: a full or read-only disk, a missing permission,
a config, data or checkpoint mistake is one line naming the path, exit 2 (1 when a run that had
started failed). The traceback is printed too with --debug or ELECTRA_DIST_DEBUG=1. `writing(path)`
puts the path on OS errors that lack one (a write() on a full disk names no file, torch.save's C++
writer says only "basic_ios::clear: iostream error").
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Iterator

DEBUG_ENV = "ELECTRA_DIST_DEBUG"

ADVICE = {
    errno.ENOSPC: "no space left on the device: free some (or point output_dir elsewhere) and run the same "
    "command again; the newest complete checkpoint is kept",
    errno.EDQUOT: "disk quota exceeded: free some of your quota (or point output_dir elsewhere) and run the same "
    "command again; the newest complete checkpoint is kept",
    errno.EROFS: "the file system is read-only: point output_dir at a writable one",
    errno.EACCES: "permission denied: make it writable for this user or choose another path",
    errno.EPERM: "operation not permitted: make it writable for this user or choose another path",
}
_TORCH_WRITE_FAILURES = ("iostream error", "PytorchStreamWriter failed", "file write failed", "unexpected pos")


class UserError(Exception):
    """A mistake the user can fix from its message alone: one line, exit 2."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def take_debug_flag(argv: list[str]) -> list[str]:
    """`--debug` anywhere on a command line: tracebacks on (through the environment, for every rank)."""
    if "--debug" in argv:
        os.environ[DEBUG_ENV] = "1"
        argv = [a for a in argv if a != "--debug"]
    return argv


def one_line(e: BaseException) -> str | None:
    """The user-facing line for errors a user can act on; None for a bug (traceback)."""
    if isinstance(e, OSError) and e.errno in ADVICE:
        path = e.filename if e.filename is not None else "(no path given)"
        return f"{path}: {ADVICE[e.errno]}"
    if isinstance(
        e, (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
    ):  # ValueError: ConfigError and our data errors
        return str(e)
    return None


def report(e: BaseException, code: int = 2) -> int:
    """Print `e` as one line (plus the traceback when debugging); the exit code. A bug re-raises."""
    line = one_line(e)
    if line is None:
        raise e
    print(f"electra-dist: {line}", file=sys.stderr, flush=True)
    if debugging():
        traceback.print_exception(e, file=sys.stderr)
    elif not isinstance(e, (UserError, ValueError)):  # ConfigError is a ValueError: nothing more to see
        print(f"electra-dist: (the traceback: run again with --debug or {DEBUG_ENV}=1)", file=sys.stderr, flush=True)
    return code


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """OS errors raised inside name `path`; torch's C++ write failures become the OSError they were."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except RuntimeError as e:
        if not any(s in str(e) for s in _TORCH_WRITE_FAILURES):
            raise
        raise OSError(_write_errno(Path(path)), f"writing failed ({str(e).splitlines()[0][:120]})", str(path)) from e


def _write_errno(path: Path) -> int:
    """Why a write without an errno failed: a full disk, or a read-only one, or unknown (EIO)."""
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if shutil.disk_usage(probe).free < (1 << 20):
            return errno.ENOSPC
    except OSError:
        pass
    return errno.EIO if os.access(probe, os.W_OK) else errno.EROFS


def check_writable(directory: str | Path, need_bytes: int = 0, what: str = "output_dir") -> None:
    """Before the slow start-up: `directory` can be created and written, with `need_bytes` free."""
    d = Path(directory)
    probe = d / f".write-test-{os.getpid()}"
    with writing(probe):
        d.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    free = shutil.disk_usage(d).free
    if need_bytes and free < need_bytes:
        raise UserError(
            f"{what}={d}: {free / 2**30:.2f} GiB free, but one checkpoint needs about "
            f"{need_bytes / 2**30:.2f} GiB (weights, fp32 masters and Adam moments): free space or "
            f"choose another {what}"
        )


OUTPUT_MARKER = ".electra-dist-output"


def claim_output_dir(out: str | Path, command: str, force: bool = False) -> None:
    """`--out` of a command that writes a directory: new, empty, an earlier output of the same command, or
    `force`d — never silently over a user's other files. Marks the directory as this command's."""
    import json

    d = Path(out)
    marker = d / OUTPUT_MARKER
    if d.exists() and not d.is_dir():
        raise UserError(f"--out {d} is a file, not a directory")
    entries = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    ours = marker.is_file() and json.loads(marker.read_text() or "{}").get("command") == command
    if entries and not ours and not force:
        raise UserError(
            f"--out {d} already holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} "
            f"({', '.join(entries[:3])}{', …' if len(entries) > 3 else ''}) and is not an earlier output "
            f"of `electra-dist {command}`: choose a new directory, or pass --force to write into it"
        )
    with writing(marker):
        d.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"command": command}) + "\n")
