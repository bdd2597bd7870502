"""BERT's block vs ModernBERT's (model.architecture, #27) under ELECTRA at equal pre-training FLOPs, on CPU.

    python bench/modern_vs_bert.py --work /tmp/frozen-ablation \
        --train ../shared/data/labeled/rotten-tomatoes.train.jsonl /tmp/source-id/source-id.train.jsonl \
        --test ../shared/data/labeled/rotten-tomatoes.test.jsonl /tmp/source-id/source-id.test.jsonl

Uses the tokenizer and shards bench/frozen_ablation.py made in WORK (and its joint run, when there, as the
bert arm: the same config). bert: the `electra-dist experiment` CPU presets' 4 × 128 encoder (FFN 512,
embeddings 128), generator 4 × 32. modern: the same depth and width, a GeGLU FFN of 344 (about the same
parameters: 3 · 344 ≈ 2 · 512), local window 64 (each token sees ±32 of the 128) with a global layer every
third, rotary positions, for as many steps as bert's FLOPs buy. Both evaluated on the held-out split and
fine-tuned (3 seeds, LR chosen on a dev split). Prints the Markdown tables; rerun to go on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from electra_dist.commands import child_env, train_launcher
from electra_dist.commands.experiment import PRESETS, TINY, _finetune_cached, _pretrain, _pretraining_row, task_name
from electra_dist.config import Config
from electra_dist.rundir import OutputDir
from electra_dist.training.flops import flops_per_sequence

MODERN = ["model.architecture=modern", "model.discriminator.intermediate_size=344",
          "model.generator.intermediate_size=86", "model.local_window=64", "model.layer_norm_eps=1e-5"]  # fmt: skip
KEYS = [("eval/discriminator_loss", "RTD loss"), ("eval/discriminator_auc", "RTD AUC"),
        ("eval/discriminator_accuracy", "RTD acc"), ("eval/generator_accuracy", "MLM acc"),
        ("eval/sampled_accuracy", "sampled = original")]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=1000, help="the bert arm's steps: the budget")
    a = p.parse_args()
    preset, work = PRESETS["cpu-small"], Path(a.work).resolve()
    tok, shards = work / "tokenizer", work / "shards"
    common = [f"train.seq_len={preset.seq_len}", f"train.global_batch_size={preset.batch}",
              f"train.micro_batch_size={preset.batch}", f"optim.lr={preset.lr}", "train.precision=fp32",
              f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "tracking.experiment=modern-vs-bert",
              "data.num_workers=1"]  # fmt: skip
    vocab = [f"model.vocab_size={preset.vocab_size}"]
    seq = preset.seq_len
    per = {name: flops_per_sequence(Config.build("debug", TINY + extra + common + vocab).model, seq, 0.15 * seq)
           for name, extra in (("bert", []), ("modern", MODERN))}  # fmt: skip
    steps = {"bert": a.steps, "modern": round(a.steps * per["bert"] / per["modern"])}
    launch = [*train_launcher(1), "--config", "debug", "--data", str(shards), "--tokenizer", str(tok)]

    def sh(*cmd: str) -> None:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        subprocess.run(list(cmd), check=True, env=child_env())

    runs = {"bert": work / "joint", "modern": work / "modern"}  # the frozen ablation's joint run is the bert arm
    rows = {}
    for name, extra in (("bert", []), ("modern", MODERN)):
        run_dir, clock = runs[name], runs[name] / "experiment_seconds.json"
        if not (OutputDir(run_dir).final / "model.pt").is_file():
            _pretrain(sh, launch, run_dir, steps[name], [*TINY, *extra, *common, f"tracking.run_name={name}"], clock)
        rows[name] = _pretraining_row(run_dir, steps[name], clock)
    tasks = {task_name(tr): (tr, te) for tr, te in zip(a.train, a.test)}
    for name in rows:
        cache = work / "finetune" / ("joint" if name == "bert" else name)
        final = OutputDir(runs[name]).final
        rows[name]["tasks"] = {t: _finetune_cached(cache / f"{t}.json", final, task, tok, preset, None,
                                                   label=f"{name} on {t}") for t, task in tasks.items()}  # fmt: skip
    (work / "modern_vs_bert.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"\nFLOPs per sequence: bert {per['bert']:.3e}, modern {per['modern']:.3e}; steps {steps}\n")
    print("| block | steps | FLOPs | minutes | " + " | ".join(n for _, n in KEYS) + " | " + " | ".join(tasks) + " |")
    print("|---|---|---|---|" + "---|" * (len(KEYS) + len(tasks)))
    for name, r in rows.items():
        t = r["tasks"]
        print(f"| {name} | {r['steps']} | {r['flops']:.2e} | {r['seconds'] / 60:.1f} | "
              + " | ".join(f"{r['eval'].get(k, float('nan')):.4f}" for k, _ in KEYS) + " | "
              + " | ".join(f"{t[k]['mean']:.3f} ± {t[k]['std']:.3f}" for k in tasks) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
