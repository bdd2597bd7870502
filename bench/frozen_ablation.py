"""Joint vs frozen generator at equal pre-training FLOPs (objective.generator, #26), on CPU.

    python bench/frozen_ablation.py --corpus ../shared/data/english-mixed.jsonl.gz \
        --train ../shared/data/labeled/rotten-tomatoes.train.jsonl /tmp/source-id/source-id.train.jsonl \
        --test ../shared/data/labeled/rotten-tomatoes.test.jsonl /tmp/source-id/source-id.test.jsonl \
        --out /tmp/frozen-ablation

1. an MLM of the generator's shape (the `electra-dist experiment` CPU presets' 4 × 32 generator, embeddings
   128) pre-trained by this project for --mlm-steps: the frozen generator, its cost reported on its own;
2. ELECTRA with the usual joint generator for --steps (the budget);
3. ELECTRA with that MLM frozen (objective.generator=frozen), for as many steps as the same FLOPs buy
   (no generator backward: more steps), at temperature 1;
4. the same with Fast-ELECTRA's annealing, temperature 2 → 1 (linear) over its steps.
Each discriminator is evaluated on the shards' held-out split every quarter of its run and fine-tuned on
every --train/--test set (`electra-dist experiment`'s fine-tuning: 3 seeds, LR chosen on a dev split).
Prints the Markdown tables; rerun the same command after a kill to go on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from electra_dist.commands import child_env, train_launcher
from electra_dist.commands.experiment import (
    PRESETS,
    TINY,
    _finetune_cached,
    _prepare_data,
    _pretrain,
    _pretraining_row,
    task_name,
)
from electra_dist.config import Config
from electra_dist.rundir import OutputDir
from electra_dist.tracking import read_metrics
from electra_dist.training.flops import flops_per_sequence

GENERATOR = ["model.discriminator.num_layers=4", "model.discriminator.hidden_size=32",
             "model.discriminator.num_heads=1", "model.discriminator.intermediate_size=128"]  # fmt: skip
KEYS = [("eval/discriminator_loss", "RTD loss"), ("eval/discriminator_auc", "RTD AUC"),
        ("eval/discriminator_accuracy", "RTD acc"), ("eval/generator_accuracy", "MLM acc"),
        ("eval/sampled_accuracy", "sampled = original")]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", nargs="+", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1000, help="the joint run's steps: the budget")
    p.add_argument("--mlm-steps", type=int, default=1000, help="the frozen generator's own pre-training")
    a = p.parse_args()
    preset = PRESETS["cpu-small"]
    out = Path(a.out).resolve()
    tok, shards = out / "tokenizer", out / "shards"
    env = child_env()

    def sh(*cmd: str) -> None:
        import subprocess

        print(f"\n=== {' '.join(cmd)}", flush=True)
        subprocess.run(list(cmd), check=True, env=env)

    out.mkdir(parents=True, exist_ok=True)
    _prepare_data(sh, [sys.executable, "-m", "electra_dist"], a.corpus, tok, shards, preset, 2000)
    common = [f"train.seq_len={preset.seq_len}", f"train.global_batch_size={preset.batch}",
              f"train.micro_batch_size={preset.batch}", f"optim.lr={preset.lr}", "train.precision=fp32",
              f"tracking.uri=sqlite:///{out / 'mlflow.db'}", "tracking.experiment=frozen-ablation",
              "data.num_workers=1"]  # fmt: skip
    launch = [*train_launcher(1), "--config", "debug", "--data", str(shards), "--tokenizer", str(tok)]
    generator = out / "mlm-generator"
    frozen = ["objective.generator=frozen", f"model.generator_from={OutputDir(generator).final}"]
    vocab = f"model.vocab_size={preset.vocab_size}"  # the tokenizer's (FLOPs count the vocabulary head)
    joint_cfg = Config.build("debug", TINY + common + [vocab])
    arms = {"mlm-generator": (a.mlm_steps, TINY + GENERATOR + ["objective.kind=mlm"]), "joint": (a.steps, TINY)}
    rows = {}
    for name, (steps, model) in arms.items():
        rows[name] = _run(sh, launch, out / name, steps, [*model, *common, f"tracking.run_name={name}"])
    gen_cfg = Config.build("debug", TINY + GENERATOR + common + [vocab]).model
    seq = preset.seq_len
    per_joint = flops_per_sequence(joint_cfg.model, seq, 0.15 * seq)
    per_frozen = flops_per_sequence(joint_cfg.model, seq, 0.15 * seq, frozen=gen_cfg)
    frozen_steps = round(a.steps * per_joint / per_frozen)
    for name, extra in (
        ("frozen", frozen),
        ("frozen-annealed", frozen + ["objective.temperature_schedule=linear", "objective.temperature_start=2"]),
    ):
        rows[name] = _run(sh, launch, out / name, frozen_steps, [*TINY, *common, *extra, f"tracking.run_name={name}"])
    tasks = {task_name(tr): (tr, te) for tr, te in zip(a.train, a.test)}
    for name in ("joint", "frozen", "frozen-annealed"):
        rows[name]["tasks"] = {
            t: _finetune_cached(out / "finetune" / name / f"{t}.json", OutputDir(out / name).final, task, tok, preset,
                                None, label=f"{name} on {t}")
            for t, task in tasks.items()
        }  # fmt: skip
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    _print_tables(out, rows, tasks, frozen_steps, per_joint / per_frozen)


def _run(sh, launch: list[str], run_dir: Path, steps: int, overrides: list[str]) -> dict:
    clock = run_dir / "experiment_seconds.json"
    if not (OutputDir(run_dir).final / "model.pt").is_file():
        _pretrain(sh, launch, run_dir, steps, overrides, clock)
    return _pretraining_row(run_dir, steps, clock)


def _print_tables(out: Path, rows: dict, tasks: dict, frozen_steps: int, ratio: float) -> None:
    print(f"\nfrozen steps for the joint budget: {frozen_steps} (joint FLOPs/step ÷ frozen = {ratio:.3f})\n")
    print("| run | steps | FLOPs | minutes | tokens/s | " + " | ".join(n for _, n in KEYS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(KEYS))
    for name, r in rows.items():
        ev = r["eval"]
        print(f"| {name} | {r['steps']} | {r['flops']:.2e} | {r['seconds'] / 60:.1f} | {r['tokens_per_s']:,.0f} | "
              + " | ".join(f"{ev.get(k, float('nan')):.4f}" for k, _ in KEYS) + " |")  # fmt: skip
    print("\nheld-out over training:\n")
    print("| run | step | FLOPs | " + " | ".join(n for _, n in KEYS) + " |")
    print("|---|---|---|" + "---|" * len(KEYS))
    for name in ("joint", "frozen", "frozen-annealed"):
        for r in (r for r in read_metrics(OutputDir(out / name).metrics) if "eval/loss" in r):
            print(f"| {name} | {r['step']} | {r['progress/flops']:.2e} | "
                  + " | ".join(f"{r.get(k, float('nan')):.4f}" for k, _ in KEYS) + " |")  # fmt: skip
    print("\nfine-tuning (test accuracy, mean ± std over seeds; majority class):\n")
    print("| run | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for name in ("joint", "frozen", "frozen-annealed"):
        t = rows[name]["tasks"]
        print(f"| {name} | " + " | ".join(f"{t[k]['mean']:.3f} ± {t[k]['std']:.3f} ({t[k]['majority']:.3f})"
                                           for k in tasks) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
