"""`electra-dist experiment`: ELECTRA vs MLM at the SAME pre-training FLOPs, then fine-tuned.

corpus → tokenizer → shards → ELECTRA run (N steps) and MLM run (as many steps as the same
FLOPs buy, same encoder, same data path and tracking) → fine-tune both on a labeled set over
several seeds → a Markdown table (FLOPs, pre-training time, accuracy ± std) appended to RESULTS,
with a control: the same fine-tuning from random weights (does pre-training help at this budget?).
Every stage is the same command a user would run; the runs land in one MLflow experiment, so
`electra-dist compare --experiment electra-vs-mlm --x flops` draws them against FLOPs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from electra_dist.commands import PACKAGE_DIR, child_env, train_launcher
from electra_dist.config import Config
from electra_dist.tracking import read_metrics
from electra_dist.training.flops import flops_per_token

# a small encoder: 4 layers of 128 (the discriminator and the MLM model); generator at 1/4 width
MODEL = ["model.embedding_size=128", "model.discriminator.num_layers=4", "model.discriminator.hidden_size=128",
         "model.discriminator.num_heads=2", "model.discriminator.intermediate_size=512",
         "model.generator.num_layers=4", "model.generator.hidden_size=32", "model.generator.num_heads=1",
         "model.generator.intermediate_size=128", "model.max_position_embeddings=128"]


def run(corpus: list[str], train: str, test: str, out: str | Path, results: str | Path, electra_steps: int = 1000,
        batch: int = 32, seq_len: int = 128, vocab_size: int = 8000, seeds: int = 3, lr: float = 1e-3,
        finetune_epochs: int = 3, finetune_lr: float = 3e-4, nproc: int = 1, control: bool = True,
        vocab_shards: int = 2000) -> dict:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tok, shards = out / "tokenizer", out / "shards"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    me = [sys.executable, "-m", "electra_dist"]
    env = child_env()

    def sh(*cmd: str) -> None:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        subprocess.run(list(cmd), check=True, env=env)

    if not (tok / "spm.model").is_file():
        sh(*me, "tokenizer", "train", "--input", *corpus, "--vocab-size", str(vocab_size), "--lowercase",
           "--out", str(tok))
    if not (shards / "manifest.json").is_file():
        sh(*me, "shards", "build", "--input", *corpus, "--tokenizer", str(tok), "--seq-len", str(seq_len),
           "--out", str(shards), "--samples-per-shard", str(vocab_shards), "--quiet", "--overwrite")

    common = MODEL + [f"train.seq_len={seq_len}", f"train.global_batch_size={batch}",
                      f"train.micro_batch_size={batch // nproc}", f"optim.lr={lr}", "train.log_interval=25",
                      "train.precision=fp32", f"tracking.uri={uri}", "tracking.experiment=electra-vs-mlm",
                      "data.num_workers=1"]
    electra_cfg = Config.build("debug", common + [f"optim.warmup_steps={electra_steps // 10}"])
    mlm_cfg = Config.build("debug", common + ["objective.kind=mlm"])
    budget = electra_steps * batch * seq_len * flops_per_token(electra_cfg.model, seq_len, 0.15, "electra")
    mlm_steps = round(budget / (batch * seq_len * flops_per_token(mlm_cfg.model, seq_len, 0.15, "mlm")))
    launcher = train_launcher(nproc)
    rows = {}
    for name, steps, extra in (("electra", electra_steps, []),
                               ("mlm", mlm_steps, ["objective.kind=mlm", "objective.mask_prob=0.15"])):
        run_dir = out / name
        t0 = time.perf_counter()
        if not (run_dir / "final" / "model.pt").is_file():
            sh(*launcher, "--config", "debug", "--data", str(shards), "--tokenizer", str(tok), "--output-dir",
               str(run_dir), "--max-steps", str(steps), *common, f"optim.warmup_steps={steps // 10}",
               f"train.save_interval={steps}", f"tracking.run_name={name}", *extra)
        seconds = time.perf_counter() - t0
        records = read_metrics(run_dir / "metrics.jsonl")
        from electra_dist.commands.finetune import finetune

        print(f"\n=== fine-tune {name} on {train}", flush=True)
        ft = finetune(str(run_dir / "final"), train, test, str(tok), seeds=seeds, epochs=finetune_epochs,
                      lr=finetune_lr)
        rows[name] = {"steps": steps, "flops": records[-1]["progress/flops"], "seconds": seconds,
                      "tokens_per_s": sum(r["throughput/tokens_per_s"] for r in records) / len(records),
                      "final_loss": records[-1]["loss/total"], "accuracies": ft.accuracies, "mean": ft.mean,
                      "std": ft.std}
    if control:  # the same fine-tuning from random weights: does pre-training help at this budget?
        from electra_dist.interop import save_model
        from electra_dist.commands.finetune import finetune
        from electra_dist.model import ElectraPretrainer

        import torch

        torch.manual_seed(0)
        rand_cfg = Config.build("debug", common + [f"model.vocab_size={vocab_size}", f"data.tokenizer={tok}"])
        save_model(out / "random_init", ElectraPretrainer(rand_cfg.model, rand_cfg.objective), rand_cfg)
        print("\n=== fine-tune the random-init control", flush=True)
        ft = finetune(str(out / "random_init"), train, test, str(tok), seeds=seeds, epochs=finetune_epochs,
                      lr=finetune_lr)
        rows["random init (control)"] = {"steps": 0, "flops": 0.0, "seconds": 0.0, "tokens_per_s": 0.0,
                                         "final_loss": float("nan"), "accuracies": ft.accuracies,
                                         "mean": ft.mean, "std": ft.std}
    _write_results(Path(results), rows, corpus, train, test, electra_steps, batch, seq_len, seeds)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def _write_results(path: Path, rows: dict, corpus, train, test, electra_steps, batch, seq_len, seeds) -> None:
    commit = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        f"\n## ELECTRA vs MLM at equal pre-training FLOPs — {time.strftime('%Y-%m-%d')}, commit {commit or '?'}",
        "",
        f"Device: {platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), fp32. Corpus: "
        f"{', '.join(Path(c).name for c in corpus)}; fine-tuning: {Path(train).name} → {Path(test).name}, "
        f"{seeds} seeds. Encoder: 4 layers × 128 (2 heads, FFN 512, embeddings 128); ELECTRA's generator "
        f"4 × 32. Seq {seq_len}, batch {batch}; ELECTRA {electra_steps} steps, MLM as many as the same FLOPs buy.",
        "",
        "| objective | steps | pre-training FLOPs | pre-training time | tokens/s | accuracy (mean ± std) | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        pre = (f"{r['steps']} | {r['flops']:.3e} | {r['seconds'] / 60:.1f} min | {r['tokens_per_s']:,.0f}"
               if r["steps"] else "— | 0 | — | —")
        lines.append(f"| {name} | {pre} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{', '.join(f'{a:.4f}' for a in r['accuracies'])} |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
