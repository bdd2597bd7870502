"""Small file and repository helpers every room uses: a file replaced whole, a file's SHA-256, the
checkout's commit."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout, when the package runs from one


def write_atomic(path: str | Path, text: str) -> Path:
    """`text` into `path` through a temporary file beside it and a rename: a reader (or a crash) sees the
    old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(short: bool = False) -> str | None:
    """The checkout's HEAD commit, or None (an installed copy, no git)."""
    try:
        r = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", *(["--short"] if short else []), "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None
