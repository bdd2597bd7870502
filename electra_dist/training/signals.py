"""SLURM pre-emption (SIGUSR1), termination (SIGTERM) and Ctrl-C: remembered, acted on before the next step.

Python runs a signal handler only between bytecodes, so a rank blocked inside a collective on a
hung peer would never see it. The C-level handler also writes the signal number to a wakeup
socket, which a watchdog thread reads at once: if the ranks have not agreed to stop within
`stop_timeout` seconds (and no checkpoint is being written), this rank is stuck and exits, saying so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)  # Ctrl-C checkpoints too; a second one stops at once


class StopSignals:
    """While installed, USR1/TERM set `received` (the signal number) instead of killing the process;
    the loop checkpoints and exits cleanly before its next step. `stop_timeout`: seconds the ranks
    have to agree to stop (`agreed()`) before a blocked rank exits with `who` in its message."""

    def __init__(self, stop_timeout: float | None = None, who: str = "this rank"):
        self.received = 0
        self.stop_timeout, self.who = stop_timeout, who
        self._agreed, self._busy = threading.Event(), 0
        self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        self._wakeup: socket.socket | None = None
        if stop_timeout:
            self._wakeup, writer = socket.socketpair()
            writer.setblocking(False)
            self._writer = writer
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            threading.Thread(target=self._watch, name="stop-signal-watchdog", daemon=True).start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: no checkpoint
        self.received = signum

    def agreed(self) -> None:
        """Every rank stops before the same step: what is left (the checkpoint) is bounded work."""
        self._agreed.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A checkpoint is being written: a signal waits for it rather than cutting it short."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    def _watch(self) -> None:
        assert self._wakeup is not None and self.stop_timeout
        while True:
            try:
                data = self._wakeup.recv(1)
            except OSError:
                return
            if not data:
                return  # restored
            if data[0] in SIGNALS:
                break
        signum, deadline = data[0], time.monotonic() + self.stop_timeout
        while not self._agreed.wait(0.2):
            if self._busy:
                deadline = time.monotonic() + self.stop_timeout
            elif time.monotonic() > deadline:
                os.write(2, (f"electra-dist: {self.who}: got {signal.Signals(signum).name} but the ranks did not "
                             f"agree to stop within parallel.stop_timeout={self.stop_timeout:g}s: this rank is "
                             "blocked waiting for another that is hung, stopped or gone. Exiting without a "
                             "checkpoint; the newest complete one is kept for the resume.\n").encode())
                os._exit(128 + signum)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            self._agreed.set()
            self._writer.close()
            self._wakeup.close()
            self._wakeup = None
