"""SLURM pre-emption (SIGUSR1), termination (SIGTERM), Ctrl-C and a dead launcher: remembered from the
first line of main(), acted on before the next step.

A signal during start-up (engine build, resume) is kept and acted on at the first step boundary:
the run stops there, with PREEMPTED, before training anything. Python runs a signal handler only
between bytecodes, so a rank blocked inside a collective on a hung peer would never see it. Once
the loop runs (`arm`), the C-level handler also writes the signal number to a wakeup socket that a
watchdog thread reads at once: if the ranks have not agreed to stop within `stop_timeout` seconds
(and no checkpoint is being written), this rank is stuck and exits, saying so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator

from electra_dist.procs import STOP_SIGNALS, die_with_launcher, launcher_gone, stop_watching_launcher

SIGNALS = STOP_SIGNALS  # Ctrl-C checkpoints too; a second one stops at once


class StopSignals:
    """While installed, USR1/TERM/INT set `received` (the signal number) instead of killing the
    process; the loop checkpoints and exits cleanly before its next step."""

    def __init__(self, watch_launcher: bool = True):
        self.received = 0
        self.stop_timeout: float | None = None
        self.who = "this rank"
        self._agreed, self._armed, self._busy = threading.Event(), threading.Event(), 0
        self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        self._wakeup: socket.socket | None = None
        self.launcher = die_with_launcher() if watch_launcher else None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: no checkpoint
        self.received = self.received or signum

    def asked(self) -> bool:
        return bool(self.received)

    def describe(self, signum: int = 0) -> str:
        """Why this rank stops: its signal, or another rank's (the ranks agree on the step), and whether
        its launcher is gone — a killed launcher signals every rank at once, and the one whose handler
        ran last learns of the stop from the others first."""
        signum = signum or self.received
        name = signal.Signals(signum).name if signum else "by another rank"
        gone = launcher_gone() or (
            f"the launcher (pid {self.launcher}) is gone"
            if self.launcher is not None and os.getppid() != self.launcher
            else None
        )
        return f"{name}: {gone}" if gone else name

    def arm(self, stop_timeout: float | None, who: str) -> None:
        """The loop is about to run: from now on a rank that cannot agree to stop exits by itself."""
        self.stop_timeout, self.who = stop_timeout, who
        if stop_timeout and self._wakeup is None:
            self._wakeup, writer = socket.socketpair()
            writer.setblocking(False)
            self._writer = writer
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            threading.Thread(target=self._watch, name="stop-signal-watchdog", daemon=True).start()

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

    def _wait_for_a_signal(self) -> int | None:
        """The signal's number as soon as the C-level handler wrote it (the main thread may be blocked in
        a collective, where Python's handler cannot run), or one that came before `arm`. None once `restore`
        (on the main thread) closed the socket: it is read through this thread's own reference, never the
        attribute `restore` sets to None."""
        wakeup = self._wakeup
        if wakeup is None:
            return None
        wakeup.settimeout(0.2)
        while not self.received:
            try:
                data = wakeup.recv(1)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not data:
                return None  # restored
            if data[0] in SIGNALS:
                return data[0]
        return self.received

    def _watch(self) -> None:
        signum = self._wait_for_a_signal()
        if signum is None or self.stop_timeout is None:
            return
        deadline = time.monotonic() + self.stop_timeout
        while not self._agreed.wait(0.2):
            if self._busy:
                deadline = time.monotonic() + self.stop_timeout
            elif time.monotonic() > deadline:
                os.write(
                    2,
                    (
                        f"electra-dist: {self.who}: got {self.describe(signum)} but the ranks did not "
                        f"agree to stop within parallel.stop_timeout={self.stop_timeout:g}s: this rank is "
                        "blocked waiting for another that is hung, stopped or gone. Exiting without a "
                        "checkpoint; the newest complete one is kept for the resume.\n"
                    ).encode(),
                )
                os._exit(128 + signum)

    def restore(self) -> None:
        if self.launcher is not None:
            stop_watching_launcher()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            self._agreed.set()
            self._writer.close()
            self._wakeup.close()
            self._wakeup = None
