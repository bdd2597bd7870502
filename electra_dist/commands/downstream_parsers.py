"""The command line's downstream commands: finetune, glue, experiment (what a pre-trained encoder is worth)."""

from __future__ import annotations

import argparse

from electra_dist.commands import handlers as h


def add_downstream_commands(sub) -> None:
    """finetune, experiment: what a pre-trained encoder is worth"""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder: classification, regression, token classification, extractive QA",
        description="On transformers' Trainer, from our checkpoint (RUN/final, any training checkpoint), our "
        "export or a Hugging Face directory: layer-wise LR decay (done right), warm-up, several seeds; the LR "
        "(--lr auto) and the best seed chosen on a dev split carved from --train; each kind's official "
        "metrics per seed, mean ± std and median, beside the trivial baseline (majority class, mean "
        "prediction, all-O, always-null).",
    )
    p.add_argument("--model", required=True, help="checkpoint, export or Hugging Face directory")
    p.add_argument("--train", required=True, help="JSONL (text/label), CoNLL columns or JSONL tokens/tags, SQuAD JSON")
    p.add_argument("--test", required=True, help="the same format as --train")
    p.add_argument(
        "--task",
        default="auto",
        choices=["auto", "classification", "regression", "token", "qa"],
        help="the task kind; auto: SQuAD JSON → qa, CoNLL or tokens/tags → token, fractional labels → regression",
    )
    p.add_argument("--text-field", default="text")
    p.add_argument("--text-pair-field", default=None, help="second text of sentence-pair tasks: [CLS] A [SEP] B [SEP]")
    p.add_argument("--label-field", default="label", help="any number of distinct labels, or a number (regression)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    _add_recipe_args(p, "tokens per example (QA: per window)")
    p.add_argument("--stride", type=int, default=128, help="QA: tokens the windows of a long context overlap by")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="of --train, held out to choose the LR and seed")
    _add_finetune_run_args(p, "write the best seed's model here with its tokenizer, for transformers' Auto classes")
    p.set_defaults(func=h.cmd_finetune)
    _add_glue_command(sub)
    add_experiment_command(sub)


LR_HELP = (
    "peak LR of the head, or auto (default): the best on dev of the size default (Small 3e-4, Base 1e-4, "
    "Large 5e-5) ×⅓, ×1, ×3 after a third of the epochs with one seed"
)


def _lr(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number or auto") from None


def _add_recipe_args(p: argparse.ArgumentParser, max_len_help: str) -> None:
    """What finetune and glue both take: the tokenizer and the recipe's LR, layer decay, batch and length."""
    p.add_argument("--tokenizer", default=None, help="default: the one the model names or holds")
    p.add_argument("--lr", type=_lr, default="auto", help=LR_HELP)
    p.add_argument(
        "--layer-decay", type=float, default=None, help="layer-wise LR decay; default 0.8 (Small, Base), 0.9 (Large)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128, help=max_len_help)


def _add_finetune_run_args(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (on CPU); default: OMP_NUM_THREADS, else the "
        "CPUs this job may use (SLURM_CPUS_PER_TASK, affinity) less those the load average says are busy",
    )
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--experiment", default=None, help="log to this MLflow experiment (one run, FINISHED at the end)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument(
        "--force",
        action="store_true",
        help="write --out although it holds other files (default: refuse a non-empty directory that is not an "
        "earlier --out of this command)",
    )


def _add_glue_command(sub) -> None:
    from electra_dist.finetune.glue import TASKS

    p = sub.add_parser(
        "glue",
        help="fine-tune on the GLUE tasks and print the dev table with each task's official metric",
        description="Reads the GLUE distribution as published (a folder per task: CoLA, SST-2, MRPC, STS-B, QQP, "
        "MNLI, QNLI, RTE, WNLI), fine-tunes each with the paper's settings (3 epochs; RTE and STS-B 10) and "
        "prints CoLA MCC, STS-B Pearson/Spearman, MRPC/QQP F1/accuracy, the rest accuracy (MNLI matched and "
        "mismatched), and the GLUE score (WNLI left out, as the paper); with --seeds N the medians.",
    )
    p.add_argument("--model", required=True, help="checkpoint, export or Hugging Face directory")
    p.add_argument("--data-dir", required=True, help="the GLUE folder (with CoLA/, SST-2/, ...)")
    p.add_argument(
        "--tasks",
        default=",".join(TASKS),
        type=lambda v: [t.strip().lower().replace("-", "") for t in v.split(",") if t.strip()],
        help=f"comma-separated subset (default: all of {','.join(TASKS)})",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per task; the table shows medians")
    p.add_argument("--epochs", type=int, default=0, help="default: the paper's per task (3; RTE, STS-B 10)")
    _add_recipe_args(p, "tokens per example")
    p.add_argument(
        "--from-mnli",
        action="store_true",
        help="start RTE, MRPC and STS-B from the MNLI model (as the official ELECTRA)",
    )
    _add_finetune_run_args(p, "keep each task's best model in OUT/<task>")
    p.set_defaults(func=h.cmd_glue)


def add_experiment_command(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="ELECTRA vs MLM at equal pre-training FLOPs, fine-tuned, to RESULTS.md",
        description="Pre-train ELECTRA and an MLM baseline (same encoder) for the same training "
        "FLOPs on --corpus, evaluate both on the held-out split, fine-tune both and a "
        "random-init control on every --train/--test set over seeds, append the table "
        "to --results. Rerun the same command after a kill to go on where it stopped. "
        "Presets: cpu-small (~25 min on 2 cores), cpu-medium (<= 60 min on 2 cores: does "
        "pre-training beat random weights?), gpu-h100 (ELECTRA-Small, >= 1e17 FLOPs "
        "each, ~30 min on one H100).",
    )
    p.add_argument(
        "--preset",
        default="cpu-small",
        choices=["cpu-small", "cpu-medium", "gpu-h100"],
        help="model size, steps, batch, precision and seeds; the flags below override it",
    )
    p.add_argument("--corpus", nargs="+", required=True, help="raw text (e.g. english-mixed.jsonl.gz)")
    p.add_argument("--train", nargs="+", required=True, help="labeled JSONL files (text, label), one per set")
    p.add_argument("--test", nargs="+", required=True, help="their test files, in the same order")
    p.add_argument("--out", default="experiments/electra-vs-mlm", help="working directory (rerun to resume)")
    p.add_argument("--results", default="docs/RESULTS.md", help="Markdown file the table is appended to")
    p.add_argument("--electra-steps", type=int, default=None, help="ELECTRA's steps; MLM gets the same FLOPs")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--nproc", type=int, default=1, help="training processes")
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="fine-tuning peak LR (default by size, as the paper: 3e-4 up to hidden 256)",
    )
    p.add_argument("--no-control", action="store_true", help="skip fine-tuning the random-init control")
    p.set_defaults(func=h.cmd_experiment)
