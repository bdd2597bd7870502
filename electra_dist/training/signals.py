"""SLURM pre-emption (SIGUSR1) and termination (SIGTERM): remembered, acted on before the next step."""

from __future__ import annotations

import signal
from typing import Any

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopSignals:
    """While installed, USR1/TERM set `received` (the signal number) instead of killing the process;
    the loop checkpoints and exits cleanly before its next step."""

    def __init__(self):
        self.received = 0
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
