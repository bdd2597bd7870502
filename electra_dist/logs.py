"""One logger for the package: every module logs to `logging.getLogger(__name__)`, a child of the
`electra_dist` logger, and `setup` (the trainer's and the command line's first step) gives that one
logger its handler: standard output, `electra-dist: message` (`electra-dist: warning: …` for warnings),
on global rank 0 only (a rank's own error goes to its stderr directly). `extra=PLAIN` writes the message as is
(the progress line). Used as a library without `setup`, records go wherever the application's logging
sends them."""

from __future__ import annotations

import logging
import os
import sys

PACKAGE = "electra_dist"
PLAIN = {"plain": True}


class _Stdout(logging.Handler):
    """Standard output as it is when the record is written (a test's capture, a redirected stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 — logging's own contract: never raise from emit
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if getattr(record, "plain", False):
            return msg
        level = (
            "error: " if record.levelno >= logging.ERROR else "warning: " if record.levelno >= logging.WARNING else ""
        )
        return f"electra-dist: {level}{msg}"


class _Rank0(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0


def global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup(rank: int | None = None) -> logging.Logger:
    """The package logger writes INFO and above to stdout on global rank `rank` == 0 (default: from the
    launcher's environment); calling it again replaces what an earlier call set."""
    logger = logging.getLogger(PACKAGE)
    for h in [h for h in logger.handlers if isinstance(h, _Stdout)]:
        logger.removeHandler(h)
    handler = _Stdout()
    handler.setFormatter(_Format())
    handler.addFilter(_Rank0(global_rank() if rank is None else rank))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
