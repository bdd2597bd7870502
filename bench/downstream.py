"""Every fine-tuning task kind from one pre-trained model, each score beside its trivial baseline, and the saved
model reloaded with transformers' Auto class to reproduce it; then a review-style 2-class set fine-tuned with the
size-default LR and with `--lr auto`.

    electra-dist quickstart --out /tmp/qs --steps 200          # a 200-step debug pre-training and its export
    python bench/downstream.py --model /tmp/qs/run/final --out /tmp/downstream \\
        --reviews $DATA/labeled/rotten-tomatoes.train.jsonl $DATA/labeled/rotten-tomatoes.test.jsonl

The task sets are the tests' (tests/finetune_data.py: the built-in sample's real text, labels by stated rules);
`--reviews` takes any JSONL text/label pair of files (`--review-rows` training rows of it are used).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import finetune_data as fd  # noqa: E402

from electra_dist import logs  # noqa: E402
from electra_dist.finetune import Hyper, finetune, load_task  # noqa: E402

HEADER = (
    "| task | metric | test, mean ± std over seeds | trivial baseline | LR | best seed: reported / reloaded | time |\n"
    "|---|---|---|---|---|---|---|"
)


def kinds(out: Path, fixed: bool) -> dict:
    """Each kind's set and settings; `fixed`: the LRs tests/test_downstream.py uses (else --lr auto)."""

    def hp(epochs: int, lr: float, **kw) -> Hyper:
        return Hyper(epochs=epochs, lr=lr if fixed else "auto", batch_size=16, max_len=64, **kw)

    return {
        "classification (source)": (load_task(*fd.sources(out)), hp(4, 1e-3)),
        "regression (STS-style)": (load_task(*fd.regression(out), pair_field="pair"), hp(12, 3e-3)),
        "token (CoNLL entities)": (load_task(*fd.conll(out)), hp(12, 3e-3)),
        "qa (SQuAD v1.1)": (load_task(*fd.squad(out, version_2=False)), hp(3, 1e-3, stride=16)),
        "qa (SQuAD v2.0)": (load_task(*fd.squad(out, version_2=True)), hp(3, 1e-3, stride=16)),
    }


def subset(path: str, rows: int, out: Path, seed: int = 0) -> Path:
    lines = Path(path).read_text().splitlines()
    random.Random(seed).shuffle(lines)
    dest = out / Path(path).name
    dest.write_text("\n".join(lines[:rows]) + "\n")
    return dest


def kind_row(name: str, model: str, task, hp: Hyper, seeds: int, out: Path) -> str:
    from test_downstream import _reloaded_metrics

    t0 = time.time()
    r = finetune(model, task, hp, seeds, out=out / task.name)
    again = _reloaded_metrics(out / task.name, task, hp)[r.metric]
    best = r.test[r.best_seed][r.metric]
    base = f"{r.baseline[0]}: {r.baseline[1][r.metric]:.3f}"
    cells = [name, r.metric, f"{r.mean:.3f} ± {r.std:.3f}", base, f"{r.lr:.3g}", f"{best:.4f} / {again:.4f}"]
    return "| " + " | ".join(cells) + f" | {time.time() - t0:.0f} s |"


def review_row(model: str, task, lr, seeds: int) -> str:
    t0 = time.time()
    r = finetune(model, task, Hyper(lr=lr), seeds)
    each = ", ".join(f"{s:.3f}" for s in r.scores())
    grid = json.dumps({f"{k:.3g}": round(v, 3) for k, v in r.grid.items()})
    cells = [f"reviews, --lr {lr}", "accuracy", f"{r.mean:.3f} ± {r.std:.3f} ({each})"]
    cells += [f"{r.baseline[0]}: {r.baseline[1]['accuracy']:.3f}", f"{r.lr:.3g}", f"grid {grid}"]
    return "| " + " | ".join(cells) + f" | {time.time() - t0:.0f} s |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reviews", nargs=2, metavar=("TRAIN", "TEST"))
    p.add_argument("--review-rows", type=int, default=2000)
    p.add_argument("--only-reviews", action="store_true")
    p.add_argument("--fixed-lr", action="store_true", help="the task kinds at the tests' LRs, not --lr auto")
    a = p.parse_args()
    logs.setup()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        kind_row(n, a.model, t, hp, a.seeds, out)
        for n, (t, hp) in ({} if a.only_reviews else kinds(out, a.fixed_lr)).items()
    ]
    if a.reviews:
        train, test = subset(a.reviews[0], a.review_rows, out), subset(a.reviews[1], 10**9, out)
        rows += [review_row(a.model, load_task(train, test), lr, a.seeds) for lr in (3e-4, "auto")]
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
