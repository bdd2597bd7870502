"""Tied vs gradient-disentangled embedding sharing (GDES), same model, data, steps and FLOPs.

    python bench/gdes_ablation.py --tokenizer EXP/tokenizer --shards EXP/shards --out /tmp/gdes --steps 1500

Two ELECTRA runs that differ only in objective.embedding_sharing, each evaluated on the shards'
held-out split every steps/4; prints a Markdown table of the held-out metrics at every evaluation
(and leaves both runs in the MLflow experiment `gdes-ablation` under OUT). The encoder is the
`electra-dist experiment` CPU presets' (4 × 128, generator 4 × 32), so the tokenizer and shards of an
experiment run can be reused.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from electra_dist.commands import child_env, train_launcher
from electra_dist.commands.experiment import TINY
from electra_dist.tracking import read_metrics

KEYS = [
    ("eval/loss", "loss"),
    ("eval/discriminator_loss", "RTD loss"),
    ("eval/discriminator_auc", "RTD AUC"),
    ("eval/discriminator_precision", "RTD precision"),
    ("eval/discriminator_recall", "RTD recall"),
    ("eval/generator_accuracy", "MLM acc"),
    ("eval/sampled_accuracy", "sampled = original"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()
    out = Path(a.out).resolve()
    seconds = {}
    for sharing in ("tied", "gdes"):
        run_dir = out / sharing
        t0 = time.perf_counter()
        if not (run_dir / "final" / "model.pt").is_file():  # rerun: goes on where it stopped
            subprocess.run(
                train_launcher(1)
                + [
                    "--config",
                    "debug",
                    "--data",
                    a.shards,
                    "--tokenizer",
                    a.tokenizer,
                    "--output-dir",
                    str(run_dir),
                    "--max-steps",
                    str(a.steps),
                    *TINY,
                    f"train.global_batch_size={a.batch}",
                    f"train.micro_batch_size={a.batch}",
                    f"optim.lr={a.lr}",
                    f"optim.warmup_steps={a.steps // 10}",
                    f"train.eval_interval={a.steps // 4}",
                    "train.eval_samples=1024",
                    "train.log_interval=50",
                    f"train.save_interval={a.steps // 4}",
                    "data.num_workers=1",
                    f"objective.embedding_sharing={sharing}",
                    f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
                    "tracking.experiment=gdes-ablation",
                    f"tracking.run_name={sharing}",
                ],
                check=True,
                env=child_env(),
            )
        seconds[sharing] = time.perf_counter() - t0
    evals = {s: [r for r in read_metrics(out / s / "metrics.jsonl") if "eval/loss" in r] for s in ("tied", "gdes")}
    print("| step | FLOPs | sharing | " + " | ".join(name for _, name in KEYS) + " |")
    print("|---|---|---|" + "---|" * len(KEYS))
    for tied, gdes in zip(evals["tied"], evals["gdes"]):
        for sharing, r in (("tied", tied), ("gdes", gdes)):
            print(
                f"| {r['step']} | {r['progress/flops']:.2e} | {sharing} | "
                + " | ".join(f"{r[k]:.4f}" for k, _ in KEYS)
                + " |"
            )
    print("\nwall time: " + ", ".join(f"{s} {v / 60:.1f} min" for s, v in seconds.items()))


if __name__ == "__main__":
    main()
