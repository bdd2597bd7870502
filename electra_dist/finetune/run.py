"""`electra-dist finetune` on transformers' Trainer: a task of any kind, several seeds, the LR chosen on dev.

Each seed fine-tunes fresh weights from the pre-trained encoder with the paper's recipe: AdamW with layer-wise
LR decay (model.layer_lr_groups) and pre-training's schedule (10 % linear warm-up, linear decay), passed to
the Trainer as its optimizer; gradient clipping at 1.0. A dev split carved from the training file (never the
test file) picks the LR (`lr="auto"`: the size default ×⅓, ×1, ×3, one seed, a third of the epochs) and the
best seed, the one `out` keeps (with its tokenizer, for the Auto classes). Every seed's test metrics, their
mean ± std and median, and the trivial baseline are printed and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from electra_dist.finetune import encode as E
from electra_dist.finetune.model import hf_directory, layer_lr_groups, load_tokenizer, size_defaults
from electra_dist.finetune.tasks import Split, Task

log = logging.getLogger("electra_dist.finetune")
LR_GRID = (1 / 3, 1.0, 3.0)  # × the size default, for lr="auto"


@dataclass
class Hyper:
    epochs: int = 3
    lr: float | str = "auto"
    layer_decay: float | None = None
    batch_size: int = 32
    max_len: int = 128
    stride: int = 128  # QA: tokens the windows of a long context overlap by
    weight_decay: float = 0.01
    warmup: float = 0.1
    dev_fraction: float = 0.1


@dataclass
class Result:
    task: str
    kind: str
    metric: str  # the one the seeds and the LR grid are ranked by
    test: list[dict[str, float]] = field(default_factory=list)  # each seed's test metrics
    dev: list[float] = field(default_factory=list)  # each seed's dev score
    grid: dict[float, float] = field(default_factory=dict)  # lr → dev score (lr="auto")
    lr: float = 0.0
    layer_decay: float = 0.0
    baseline: tuple[str, dict[str, float]] = ("", {})
    best_seed: int = 0
    seconds: float = 0.0
    also: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # each seed's metrics on other test sets

    def scores(self, key: str | None = None) -> list[float]:
        return [m[key or self.metric] for m in self.test]

    @property
    def median(self) -> float:
        return statistics.median(self.scores())

    @property
    def mean(self) -> float:
        return statistics.mean(self.scores())

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores()) if len(self.test) > 1 else 0.0


def finetune(
    model: str | Path,
    task: Task,
    hp: Hyper | None = None,
    seeds: int = 3,
    tokenizer_dir: str | Path | None = None,
    out: str | Path | None = None,
    tracker=None,
    metric: str | None = None,
    init: str | Path | None = None,
    also: dict[str, Split] | None = None,
) -> Result:
    """Fine-tune `model` on `task` with `seeds` seeds; `init`: start the encoder from this fine-tuned model
    instead (GLUE's RTE/MRPC/STS-B from MNLI), its task head left behind; `also`: more test sets each seed's
    model is scored on (MNLI mismatched)."""
    import torch

    hp = hp or Hyper()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="finetune-") as work:
        work = Path(work)
        hf_dir = hf_directory(model, work, tokenizer_dir)
        tokenizer = load_tokenizer(hf_dir, tokenizer_dir)
        start = Path(init) if init else hf_dir
        hidden, positions = _shape(start)
        if hp.max_len > positions:  # a longer example would run past the position table
            hp = dataclasses.replace(hp, max_len=positions)
        default_lr, default_decay = size_defaults(hidden)
        result = Result(
            task.name, task.kind, metric or E.MAIN_METRIC[task.kind], layer_decay=hp.layer_decay or default_decay
        )
        order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(1234)).tolist()
        n_dev = int(hp.dev_fraction * len(order)) if len(order) >= 20 else 0
        fit, dev = task.train.subset(order[n_dev:]), task.train.subset(order[:n_dev])
        sets = _Sets(task, tokenizer, hp, fit, dev)
        extra = {
            name: (split, E.encode(task, tokenizer, split, hp.max_len, hp.stride))
            for name, split in (also or {}).items()
        }
        result.baseline = E.baseline(task, fit, task.test)
        log.info("finetune %s (%s, %d train, %d dev, %d test): hidden %d",
                 task.name, task.kind, len(fit), len(dev), len(task.test), hidden)  # fmt: skip
        result.lr = _choose_lr(result, start, sets, hp, default_lr)
        for seed in range(seeds):
            _seed(result, seed, start, sets, hp, work, extra, out, tracker)
    result.seconds = time.perf_counter() - t0
    _summary(result, seeds, tracker)
    return result


def _seed(result: Result, seed: int, start: Path, sets: _Sets, hp: Hyper, work: Path, extra: dict, out, tracker):
    """One seed: trained, scored on dev, test and the `extra` test sets, reported; saved to `out` when it is the
    best on dev so far."""
    task = sets.task
    trainer = _train(start, sets, hp, result.lr, result.layer_decay, seed, work, epochs=hp.epochs)
    dev_score, _ = sets.score_dev(trainer, result.metric)
    test = sets.score(trainer, task.test, sets.test, warn=f"seed {seed}", lr=result.lr)
    result.test.append(test)
    for name, (split, enc) in extra.items():
        result.also.setdefault(name, []).append(sets.score(trainer, split, enc))
    log.info("finetune %s seed %d: test %s, dev %s %.4f", task.name, seed, _fmt(test), result.metric, dev_score)
    if tracker is not None:  # one record a step (the tracker sends each step once): the LR grid with seed 0's
        grid = {f"finetune/lr_grid_dev_{lr:.3g}": v for lr, v in result.grid.items()} if seed == 0 else {}
        record = {f"finetune/{k}": v for k, v in test.items()} | {"finetune/dev_score": dev_score}
        tracker.log_metrics(record | grid, step=seed)
    if not result.dev or dev_score > max(result.dev):
        result.best_seed = seed
        if out is not None:
            trainer.save_model(str(out))
            sets.tokenizer.save_pretrained(str(out))
    result.dev.append(dev_score)


class _Sets:
    """The encoded fit, dev and test rows of a task, and their scoring with a trained model."""

    def __init__(self, task: Task, tokenizer, hp: Hyper, fit, dev):
        self.task, self.tokenizer, self.dev_split = task, tokenizer, dev
        self.auto = hp.lr == "auto"  # the LR was chosen on dev
        self.fit = E.encode(task, tokenizer, fit, hp.max_len, hp.stride)
        self.dev = E.encode(task, tokenizer, dev, hp.max_len, hp.stride) if len(dev) else None
        self.test = E.encode(task, tokenizer, task.test, hp.max_len, hp.stride)

    def score(self, trainer, split, enc, warn: str = "", lr: float = 0.0) -> dict[str, float]:
        """Metrics of `trainer`'s model on `split` and, as `loss`, its loss there; with `warn` (which seed), a
        warning when a classifier predicts one class only."""
        out = trainer.predict(enc.rows)  # with their labels: the predictions and the loss
        pred = E.decode(self.task, split, enc, out.predictions)
        if warn and self.task.kind == "classification" and len(set(pred)) == 1 and self.task.num_labels > 1:
            hint = "more epochs or seeds" if self.auto else "--lr auto, or more epochs"
            log.warning("finetune %s %s predicts only %r: the LR (%.3g) may be too low or too high for this model; "
                        "try %s", self.task.name, warn, self.task.label_names[pred[0]], lr, hint)  # fmt: skip
        return E.score(self.task, split, pred) | {"loss": float(out.metrics.get("test_loss", float("nan")))}

    def score_dev(self, trainer, metric: str) -> tuple[float, float]:
        """(score, loss) on the dev split; (0, inf) where there is none."""
        if self.dev is None:
            return 0.0, float("inf")
        m = self.score(trainer, self.dev_split, self.dev)
        return m[metric], m["loss"]


def _shape(model_dir: Path) -> tuple[int, int]:
    """(hidden size, positions) of a transformers directory."""
    import json

    c = json.loads((model_dir / "config.json").read_text())
    return int(c["hidden_size"]), int(c.get("max_position_embeddings", 512))


def _choose_lr(result: Result, start: Path, sets: _Sets, hp: Hyper, default_lr: float) -> float:
    """`hp.lr` if a number; "auto": the grid point with the best dev score after a short run (one seed, a third
    of the epochs), the lowest dev loss among those that tie (all predicting the majority class, say); the size
    default where there is no dev split."""
    if hp.lr != "auto":
        return float(hp.lr)
    if sets.dev is None:
        log.info(
            "finetune %s: --lr auto needs 20 training examples for a dev split; the size default %g",
            result.task,
            default_lr,
        )
        return default_lr
    short = max(1, math.ceil(hp.epochs / 3))
    losses: dict[float, float] = {}
    with tempfile.TemporaryDirectory(prefix="lr-grid-") as work:
        for scale in LR_GRID:
            lr = float(f"{default_lr * scale:.3g}")  # 1e-4, not 9.999999999999999e-05
            trainer = _train(start, sets, hp, lr, result.layer_decay, 0, Path(work), epochs=short)
            result.grid[lr], losses[lr] = sets.score_dev(trainer, result.metric)
            del trainer
    chosen = max(result.grid, key=lambda lr: (round(result.grid[lr], 6), -losses[lr]))
    grid = ", ".join(f"{lr:.3g}: {s:.4f} (loss {losses[lr]:.4f})" for lr, s in result.grid.items())
    log.info(
        "finetune %s: --lr auto: dev %s after %d epoch(s) at lr %s → %.3g",
        result.task,
        result.metric,
        short,
        grid,
        chosen,
    )
    return chosen


def _train(start: Path, sets: _Sets, hp: Hyper, lr: float, decay: float, seed: int, work: Path, epochs: int):
    """One fine-tuning run on the Trainer: fresh head (seeded), our AdamW groups and schedule."""
    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    from electra_dist.config import OptimConfig
    from electra_dist.training.optim import build_optimizer, lr_schedule

    task = sets.task
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" of every seed
    transformers.set_seed(seed)
    auto = getattr(transformers, E.AUTO_CLASS[task.kind])
    extra = {"num_labels": task.num_labels, "problem_type": "regression" if task.kind == "regression" else None}
    extra = extra if task.kind in ("classification", "regression", "token") else {}
    if task.label_names and task.kind != "regression":
        extra |= {
            "id2label": dict(enumerate(task.label_names)),
            "label2id": {n: i for i, n in enumerate(task.label_names)},
        }
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its table of the new head's "MISSING" weights, every seed
    try:
        model = auto.from_pretrained(str(start), ignore_mismatched_sizes=True, **extra)
    finally:
        transformers.logging.set_verbosity(verbosity)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size * 4,
        num_train_epochs=epochs,
        seed=seed,
        data_seed=seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=not sys.stderr.isatty(),
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        max_grad_norm=1.0,
    )
    device = torch.device("cuda" if cuda else "cpu")
    opt = build_optimizer(layer_lr_groups(model, lr, decay, hp.weight_decay), OptimConfig(lr=lr), device)
    steps = epochs * math.ceil(len(sets.fit.rows) / hp.batch_size)
    sched = lr_schedule(opt, max(1, int(hp.warmup * steps)), steps)
    trainer = Trainer(
        model=model.to(device),
        args=args,
        train_dataset=sets.fit.rows,
        data_collator=E.collator(task.kind, sets.tokenizer),
        optimizers=(opt, sched),
    )
    trainer.remove_callback(transformers.PrinterCallback)  # its dict of train metrics: we report our own
    trainer.train()
    return trainer


def _fmt(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items() if not k.endswith("total"))


def _summary(r: Result, seeds: int, tracker) -> None:
    name, base = r.baseline
    spread = f" ± {r.std:.4f}, median {r.median:.4f}" if seeds > 1 else ""
    log.info(
        "finetune %s: %s %.4f%s over %d seed(s) at lr %.3g (baseline, %s: %s %.4f; %.0f s)",
        r.task, r.metric, r.mean, spread, seeds, r.lr, name, r.metric, base.get(r.metric, 0.0), r.seconds,
    )  # fmt: skip
    if tracker is not None:
        summary = {
            f"finetune/{r.metric}_mean": r.mean,
            f"finetune/{r.metric}_std": r.std,
            f"finetune/{r.metric}_median": r.median,
        }
        tracker.log_metrics(summary | {f"finetune/baseline_{k}": v for k, v in base.items()}, step=seeds)
        tracker.log_params({"chosen_lr": r.lr, "chosen_layer_decay": r.layer_decay, "best_seed": r.best_seed})
