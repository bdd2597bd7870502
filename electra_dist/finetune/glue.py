"""`electra-dist glue`: the GLUE benchmark's dev table, as the ELECTRA paper reports it.

Reads the GLUE distribution as published (one folder per task: train.tsv and dev.tsv, MNLI's
dev_matched.tsv and dev_mismatched.tsv; CoLA's files have no header), fine-tunes each task with the paper's
settings (3 epochs, 10 for RTE and STS-B; optionally RTE, MRPC and STS-B started from the MNLI model, as the
official ELECTRA's test-set submissions do) and prints each task's official metric on dev — CoLA Matthews
correlation, STS-B Pearson/Spearman, MRPC and QQP F1/accuracy, the rest accuracy — and the GLUE score: the
mean of the task scores (a task with two metrics scores their mean), WNLI left out as in the paper. With
several seeds each number is the median, as the paper reports.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from electra_dist.finetune.run import Hyper, finetune
from electra_dist.finetune.tasks import Split, Task

log = logging.getLogger("electra_dist.finetune")


@dataclass(frozen=True)
class GlueTask:
    folder: str
    columns: tuple  # (first text, second text or None, label): header names, or column numbers (no header)
    metrics: tuple[str, ...]  # the official ones, in the table's order
    epochs: int = 3
    regression: bool = False
    header: bool = True
    dev: tuple[str, ...] = ("dev.tsv",)


TASKS = {
    "cola": GlueTask("CoLA", (3, None, 1), ("mcc",), header=False),
    "sst2": GlueTask("SST-2", ("sentence", None, "label"), ("accuracy",)),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String", "Quality"), ("f1", "accuracy")),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2", "score"), ("pearson", "spearman"), 10, regression=True),
    "qqp": GlueTask("QQP", ("question1", "question2", "is_duplicate"), ("f1", "accuracy")),
    "mnli": GlueTask(
        "MNLI", ("sentence1", "sentence2", "gold_label"), ("accuracy",), dev=("dev_matched.tsv", "dev_mismatched.tsv")
    ),
    "qnli": GlueTask("QNLI", ("question", "sentence", "label"), ("accuracy",)),
    "rte": GlueTask("RTE", ("sentence1", "sentence2", "label"), ("accuracy",), 10),
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2", "label"), ("accuracy",)),
}
FROM_MNLI = ("rte", "mrpc", "stsb")


def read_tsv(path: Path, spec: GlueTask) -> Split:
    """One GLUE TSV file as published (quotes are text, not quoting)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the GLUE folder of {spec.folder} holds train.tsv, dev.tsv)")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.header:
        head, rows = rows[0], rows[1:]
        try:
            cols = [head.index(c) if c is not None else None for c in spec.columns]
        except ValueError as e:
            raise ValueError(f"{path}: {e} (its header: {head})") from None
    else:
        cols = list(spec.columns)
    a, b, y = cols
    rows = [r for r in rows if len(r) > max(c for c in cols if c is not None)]
    labels = [float(r[y]) if spec.regression else r[y] for r in rows]
    return Split([r[a] for r in rows], labels, [r[b] for r in rows] if b is not None else None)


def task(name: str, data_dir: Path, dev: str | None = None) -> Task:
    spec = TASKS[name]
    folder = data_dir / spec.folder
    train, test = read_tsv(folder / "train.tsv", spec), read_tsv(folder / (dev or spec.dev[0]), spec)
    kind = "regression" if spec.regression else "classification"
    names = [] if spec.regression else sorted(set(train.labels))
    label = f"{name}-{Path(dev).stem.split('_')[-1][:2]}" if dev and len(spec.dev) > 1 else name
    return Task(label, kind, train, test, names)


def run_glue(
    model: str | Path,
    data_dir: str | Path,
    tasks: list[str],
    hp: Hyper,
    seeds: int = 1,
    from_mnli: bool = False,
    tracker_for: Callable[[str], Any] | None = None,
    out: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Fine-tune every task in `tasks` (MNLI's model on both dev sets); the table's numbers per task row, in
    GLUE's order. `from_mnli`: RTE, MRPC and STS-B start from MNLI's best model (kept in `out`, or for the run).
    `tracker_for(task)`: an MLflow run of each task (closed FINISHED after it, FAILED on an error)."""
    data_dir = Path(data_dir)
    if unknown := [t for t in tasks if t not in TASKS]:
        raise ValueError(f"--tasks: {unknown} are not GLUE tasks ({', '.join(TASKS)})")
    table: dict[str, dict[str, float]] = {}
    mnli_model = None
    with tempfile.TemporaryDirectory(prefix="glue-") as work:
        for name in sorted(tasks, key=lambda t: t != "mnli"):  # MNLI first: the others may start from it
            spec = TASKS[name]
            epochs = dataclasses.replace(hp, epochs=hp.epochs or spec.epochs)
            init = mnli_model if from_mnli and name in FROM_MNLI else None
            keep = Path(out) / name if out else (Path(work) / name if name == "mnli" and from_mnli else None)
            mismatched = data_dir / spec.folder / spec.dev[1] if name == "mnli" else None
            also = {"mnli-mm": read_tsv(mismatched, spec)} if mismatched else None  # not train.tsv again
            tracker, status = (tracker_for(name) if tracker_for else None), "failed"
            try:
                r = finetune(model, task(name, data_dir), epochs, seeds, tokenizer_dir, keep, tracker, spec.metrics[0],
                             init, also)  # fmt: skip
                status = "finished"
            finally:
                if tracker is not None:
                    tracker.close(status)
            table[name if name != "mnli" else "mnli-m"] = _row(r.test, spec.metrics)
            if name == "mnli":
                mnli_model = keep
                table["mnli-mm"] = _row(r.also["mnli-mm"], spec.metrics)
    rows = [k for t in TASKS for k in ((f"{t}-m", f"{t}-mm") if t == "mnli" else (t,))]
    return {k: table[k] for k in rows if k in table}


def _row(seeds: list[dict[str, float]], metrics: tuple[str, ...]) -> dict[str, float]:
    """The task's official metrics in percent, each the median over the seeds; their mean as its score."""
    row = {m: 100 * statistics.median(s[m] for s in seeds) for m in metrics}
    row["score"] = statistics.mean(row.values())
    return row


def glue_score(table: dict[str, dict[str, float]]) -> float:
    """The mean over tasks (MNLI's matched and mismatched averaged first), WNLI left out as in the paper."""
    per_task = {k: v["score"] for k, v in table.items() if not k.startswith(("mnli", "wnli"))}
    if "mnli-m" in table:
        per_task["mnli"] = statistics.mean(table[k]["score"] for k in ("mnli-m", "mnli-mm") if k in table)
    return statistics.mean(per_task.values()) if per_task else float("nan")


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    """The dev table: each task's official metric(s) in percent, then the GLUE score."""
    lines = ["| task | metric | dev |", "|---|---|---|"]
    for name, row in table.items():
        metrics = [m for m in row if m != "score"]
        lines.append(f"| {name} | {'/'.join(metrics)} | {'/'.join(f'{row[m]:.1f}' for m in metrics)} |")
    lines.append(f"| GLUE score (no WNLI) | | {glue_score(table):.1f} |")
    return "\n".join(lines)
