"""`electra-dist quickstart`: the whole pipeline on the built-in sample text, in a couple of minutes on a laptop.

real text → SentencePiece tokenizer → WebDataset shards → a DeepSpeed training run (debug flavor)
→ an MLflow run → a Hugging Face export, each step the same command a user would type.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from electra_dist.commands import SAMPLE, ZERO2_AUTO, child_env, train_launcher
from electra_dist.rundir import OutputDir


def run(out: str | Path, steps: int = 200, nproc: int = 1, vocab_size: int = 8000, seq_len: int = 128) -> int:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tok, shards, run_dir, hf = out / "tokenizer", out / "shards", out / "run", out / "hf"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    me = [sys.executable, "-m", "electra_dist"]
    launcher = train_launcher(nproc)
    micro = 16 // nproc
    ds_json = out / "zero2.json"  # as configs/zero2.json: "auto" values come from the config
    ds_json.write_text(json.dumps(ZERO2_AUTO, indent=2))
    # command lines: flag and value side by side
    # fmt: off
    stages = [
        ("tokenizer", me + ["tokenizer", "train", "--input", str(SAMPLE), "--vocab-size", str(vocab_size),
                            "--lowercase", "--out", str(tok)]),
        ("shards", me + ["shards", "build", "--input", str(SAMPLE), "--tokenizer", str(tok), "--seq-len",
                         str(seq_len), "--out", str(shards), "--samples-per-shard", "500", "--overwrite",
                         "--eval-fraction", "0.05"]),  # the sample is small: hold out a few of its documents
        ("train", launcher + ["--deepspeed", str(ds_json), "--config", "debug", "--data", str(shards),
                              "--tokenizer", str(tok), "--output-dir", str(run_dir), "--max-steps", str(steps),
                              "--resume", "never", f"train.micro_batch_size={micro}", "train.log_interval=20",
                              f"train.eval_interval={max(1, steps // 4)}", "train.eval_samples=64",
                              f"train.save_interval={max(1, steps // 2)}", f"tracking.uri={uri}",
                              "tracking.experiment=quickstart", "data.num_workers=1"]),
        ("export", me + ["export", "--checkpoint", str(OutputDir(run_dir).final), "--out", str(hf)]),
    ]
    # fmt: on
    env = child_env()
    for name, cmd in stages:
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env)
        if r.returncode != 0:
            print(f"quickstart: the {name} step failed (exit {r.returncode})", file=sys.stderr)
            return r.returncode
        print(f"=== {name}: done in {time.perf_counter() - t0:.1f}s", flush=True)
    _check_export(hf)
    print(f"""
quickstart finished. Look at:
  {OutputDir(run_dir).metrics}      the training record ({OutputDir(run_dir).curves} as a plot)
  {hf}/discriminator, {hf}/generator   Hugging Face ELECTRA models (from_pretrained)
  mlflow ui --backend-store-uri {uri}
  electra-dist compare --tracking-uri {uri} --experiment quickstart --x tokens --out {out / "compare.png"}""")
    return 0


def _check_export(hf: Path) -> None:
    try:
        import torch
        from transformers import ElectraForPreTraining
    except ImportError:
        print("(transformers not installed: skipped loading the export back)")
        return
    model = ElectraForPreTraining.from_pretrained(hf / "discriminator")
    with torch.no_grad():
        logits = model(torch.tensor([[2, 100, 200, 300, 3]])).logits
    print(f"=== export: transformers' ElectraForPreTraining loads it; replaced-token logits {logits[0].tolist()}")
