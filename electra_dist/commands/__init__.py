"""The commands users run (`electra-dist SUBCOMMAND`), built on the library packages:
cli (the parser and dispatch), handlers (one function per subcommand), quickstart, experiment,
bench, compare, finetune. Nothing in the library imports from here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # electra_dist/
TRAIN_PY = PACKAGE_DIR / "train.py"
SAMPLE = PACKAGE_DIR / "assets" / "sample.jsonl.gz"  # real public-domain English shipped with the package
# ZeRO-2 with every size "auto" (filled from the config): the minimal form of configs/zero2.json, for
# the commands that must work from an installed package, which has no configs/
ZERO2_AUTO = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 2},
    "data_types": {"grad_accum_dtype": "fp32"},
}


def training_deepspeed_json() -> tuple[dict, str]:
    """The DeepSpeed JSON training uses by default, and where it came from: the checkout's
    configs/zero2.json, or ZERO2_AUTO from an installed package."""
    import json

    path = PACKAGE_DIR.parent / "configs" / "zero2.json"
    if path.is_file():
        return json.loads(path.read_text()), str(path)
    return dict(ZERO2_AUTO), "ZeRO-2 (built in)"


def train_launcher(nproc: int = 1) -> list[str]:
    """The command that starts `nproc` training processes on this machine (torchrun when > 1)."""
    if nproc == 1:
        return [sys.executable, str(TRAIN_PY)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(TRAIN_PY),
    ]


def child_env() -> dict[str, str]:
    """This environment with the package importable, for the subprocesses a command starts."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")])),
    }
