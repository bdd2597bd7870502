"""Steps per second of a frozen vs a jointly trained generator at equal batch (objective.generator, #26),
and of ModernBERT's block vs BERT's (`--arms joint modern`: bench/modern_vs_bert.py's shapes, #27).

    python bench/frozen_speed.py --work /tmp/frozen-ablation --steps 60 --repeats 2
    python bench/frozen_speed.py --work /tmp/frozen-ablation --steps 60 --repeats 3 --arms joint modern

Uses the tokenizer, shards and MLM generator that bench/frozen_ablation.py left in WORK. Each arm trains
--steps steps (no evaluation, no checkpoint until the end), alternating joint, frozen, joint, frozen, ... so
that a slower stretch of the machine does not fall on one arm; the steady tokens/s of each run is the
median of its records after the first quarter. Prints one Markdown row per arm.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from electra_dist.commands import child_env, train_launcher
from electra_dist.commands.experiment import TINY
from electra_dist.rundir import OutputDir
from electra_dist.tracking import read_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="bench/frozen_ablation.py's --out")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--arms", nargs="+", default=["joint", "frozen"], choices=["joint", "frozen", "modern"],
                   help="joint: BERT's block, joint generator (the baseline); frozen: its generator frozen; "
                   "modern: ModernBERT's block, joint generator")  # fmt: skip
    a = p.parse_args()
    work = Path(a.work).resolve()
    from modern_vs_bert import MODERN  # this directory: bench/

    every = {
        "joint": [],
        "frozen": ["objective.generator=frozen", f"model.generator_from={OutputDir(work / 'mlm-generator').final}"],
        "modern": MODERN,
    }
    arms = {name: every[name] for name in a.arms}
    speeds: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(a.repeats):
        for name, extra in arms.items():
            out = work / "speed" / f"{name}-{r}"
            subprocess.run(
                [*train_launcher(1), "--config", "debug", "--data", str(work / "shards"), "--tokenizer",
                 str(work / "tokenizer"), "--output-dir", str(out), "--max-steps", str(a.steps), "--resume", "never",
                 *TINY, f"train.global_batch_size={a.batch}", f"train.micro_batch_size={a.batch}",
                 "train.eval_interval=0", f"train.save_interval={a.steps}", "train.log_interval=5",
                 "tracking.enabled=false", "data.num_workers=1", *extra],
                check=True, env=child_env(), stdout=subprocess.DEVNULL,
            )  # fmt: skip
            records = read_metrics(OutputDir(out).metrics)
            steady = [x["throughput/tokens_per_s"] for x in records[len(records) // 4 :]]
            speeds[name].append(statistics.median(steady))
            print(f"{name} #{r}: {speeds[name][-1]:,.0f} tokens/s", file=sys.stderr, flush=True)
    tokens = a.batch * 128
    print(f"| arm | tokens/s per run | steps/s (median) | vs {a.arms[0]} |")
    print("|---|---|---|---|")
    base = statistics.median(speeds[a.arms[0]]) / tokens
    for name, runs in speeds.items():
        steps = statistics.median(runs) / tokens
        print(f"| {name} | {', '.join(f'{s:,.0f}' for s in runs)} | {steps:.3f} | {steps / base:.3f}× |")


if __name__ == "__main__":
    main()
