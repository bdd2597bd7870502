"""What a run records about itself: parameters (config, DeepSpeed JSON, versions, commit, SLURM)
and a plot of its metrics JSONL."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from electra_dist.config import flatten
from electra_dist.errors import writing
from electra_dist.io import git_commit, write_atomic

log = logging.getLogger(__name__)


def run_params(cfg, ds_config: dict, world: int, tp: int, dp: int) -> dict[str, Any]:
    params: dict[str, Any] = dict(cfg.flat())
    params.update({f"deepspeed.{k}": v for k, v in flatten(ds_config)})
    params.update({"world_size": world, "tensor_parallel_size_resolved": tp, "data_parallel_size": dp})
    params.update(package_versions())
    commit = git_commit()
    if commit:
        params["git.commit"] = commit
    for var in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_JOB_NAME"):
        if os.environ.get(var):
            params[f"slurm.{var[len('SLURM_') :].lower()}"] = os.environ[var]
    return params


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"version.python": sys.version.split()[0]}
    for name in (
        "electra-dist",
        "torch",
        "deepspeed",
        "megatron-core",
        "webdataset",
        "sentencepiece",
        "mlflow",
        "transformers",
    ):
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


HEADER = "run_start"  # the first record of a run started from step 0: where it started from


def read_metrics(metrics_file: str | Path, header: bool = False) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order; an empty or torn line (a crash, or the trainer
    still writing it) is left out (`scan_metrics` says which), and so is the header record unless
    `header`. Nothing when the file does not exist."""
    return scan_metrics(metrics_file, header)[0]


def scan_metrics(metrics_file: str | Path, header: bool = False) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """(records, bad lines as (line number, text)) of a metrics.jsonl."""
    path = Path(metrics_file)
    if not path.is_file():
        return [], []
    records, bad = [], []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            if line.strip():
                bad.append((n, line))
            continue
        if not isinstance(rec, dict):
            bad.append((n, line))
        elif header or HEADER not in rec:
            records.append(rec)
    return records, bad


def read_header(metrics_file: str | Path) -> dict[str, Any]:
    """The run's header (init_from, objective, …), {} if it has none."""
    return next((r[HEADER] for r in read_metrics(metrics_file, header=True) if HEADER in r), {})


def plot_run(metrics_file: Path, out: Path) -> Path | None:
    """loss and MFU (or tokens/s) against steps, from the JSONL, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [r["loss/generator"] for r in rows], label="generator (MLM)")
    if "loss/discriminator" in rows[-1]:  # not for the MLM baseline
        axes[0].plot(steps, [r["loss/discriminator"] for r in rows], label="discriminator (RTD)")
    axes[0].set_yscale("log")
    axes[0].set_title("losses")
    axes[1].plot(steps, [r["acc/generator"] for r in rows], label="generator accuracy")
    if "acc/discriminator" in rows[-1]:
        axes[1].plot(steps, [r["acc/discriminator"] for r in rows], label="discriminator accuracy")
    axes[1].set_title("accuracy")
    key = "throughput/mfu" if "throughput/mfu" in rows[-1] else "throughput/tokens_per_s"
    axes[2].plot(steps, [r.get(key, float("nan")) for r in rows])
    axes[2].set_title(key)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after `step` (logged after the checkpoint we resume from): one continuous history.
    A line that is not a record (torn by a crash, or damaged) is never dropped silently: it is kept
    in metrics.jsonl.bad with its line number, and said."""
    if not path.is_file():
        return
    records, bad = scan_metrics(path, header=True)
    kept = [rec for rec in records if rec.get("step", step + 1) <= step]
    if bad:
        aside = path.with_name(path.name + ".bad")
        with writing(aside), open(aside, "a") as f:
            f.writelines(f"{path}:{n}: {line}\n" for n, line in bad)
        log.warning(
            f"{path}: {len(bad)} line(s) that are not records (line "
            f"{', '.join(str(n) for n, _ in bad[:5])}{' …' if len(bad) > 5 else ''}) kept in {aside}"
        )
    with writing(path):
        write_atomic(path, "".join(json.dumps(rec) + "\n" for rec in kept))
