"""`electra-dist experiment`: ELECTRA vs MLM at the SAME pre-training FLOPs, then fine-tuned.

corpus → tokenizer → shards (with a held-out split) → ELECTRA run (N steps) and MLM run (as many
steps as the same FLOPs buy, same encoder, same data path and tracking), both evaluated on the
held-out split → fine-tune both on every labeled set over several seeds, with a control: the same
fine-tuning from random weights (does pre-training help at this budget?) → a Markdown table appended
to RESULTS (FLOPs, time, held-out metrics, accuracy ± std per set and the mean over sets).

Every stage is the same command a user would run, and every stage is kept: rerun the same command
after a kill (a SLURM time limit, a pre-emption) and it goes on where it stopped — finished stages
are skipped, a pre-training run resumes from its newest checkpoint, fine-tuning results are cached
per model and set. The runs land in one MLflow experiment, so `electra-dist compare --experiment
electra-vs-mlm --x flops` draws them against FLOPs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from electra_dist.commands import child_env, train_launcher
from electra_dist.config import Config
from electra_dist.io import git_commit, write_atomic
from electra_dist.rundir import OutputDir
from electra_dist.tracking import read_metrics
from electra_dist.training.flops import flops_per_token

# a small encoder: 4 layers of 128 (the discriminator and the MLM model); generator at 1/4 width
TINY = [
    "model.embedding_size=128",
    "model.discriminator.num_layers=4",
    "model.discriminator.hidden_size=128",
    "model.discriminator.num_heads=2",
    "model.discriminator.intermediate_size=512",
    "model.generator.num_layers=4",
    "model.generator.hidden_size=32",
    "model.generator.num_heads=1",
    "model.generator.intermediate_size=128",
    "model.max_position_embeddings=128",
]


@dataclass
class Preset:
    what: str  # for the table's header
    flavor: str
    model: list[str] = field(default_factory=list)
    electra_steps: int = 1000
    batch: int = 32
    seq_len: int = 128
    lr: float = 1e-3
    vocab_size: int = 8000
    precision: str = "fp32"
    seeds: int = 3
    finetune_epochs: int = 3
    workers: int = 1


PRESETS = {
    # ~25 minutes on 2 CPU cores: 2.8e13 FLOPs each, a smoke test of the comparison, not an answer
    "cpu-small": Preset(
        "4 × 128 encoder (2 heads, FFN 512, embeddings 128), ELECTRA generator 4 × 32",
        "debug",
        TINY,
        electra_steps=1000,
    ),
    # ≤ 60 minutes on 2 CPU cores: 2.5× the FLOPs of cpu-small — does pre-training beat random weights yet?
    "cpu-medium": Preset(
        "4 × 128 encoder (2 heads, FFN 512, embeddings 128), ELECTRA generator 4 × 32",
        "debug",
        TINY,
        electra_steps=2500,
    ),
    # one H100 in about 30 minutes (resumable across shorter jobs): ELECTRA-Small vs an MLM of the same
    # encoder, ≥ 1e17 FLOPs each (44k steps × 256 × 128 tokens × 7.0e7 FLOPs/token)
    "gpu-h100": Preset(
        "ELECTRA-Small (12 × 256, 4 heads, embeddings 128), generator 12 × 64",
        "electra-small",
        electra_steps=44_000,
        batch=256,
        lr=1e-3,
        vocab_size=30_000,
        precision="bf16",
        seeds=5,
        workers=4,
    ),
}


def task_name(train: str) -> str:
    name = Path(train).name.removesuffix(".gz").removesuffix(".jsonl")
    return name.removesuffix(".train").removesuffix("-train").removesuffix("_train")


# the control has no pre-training: no steps, FLOPs, time or held-out metrics
CONTROL_ROW = {"steps": 0, "flops": 0.0, "seconds": 0.0, "tokens_per_s": 0.0, "final_loss": float("nan"), "eval": {},
               "eval_share": 0.0}  # fmt: skip


def run(
    corpus: list[str],
    tasks: list[tuple[str, str]],
    out: str | Path,
    results: str | Path,
    preset: str = "cpu-small",
    nproc: int = 1,
    control: bool = True,
    samples_per_shard: int = 2000,
    finetune_lr: float | None = None,
    **overrides,
) -> dict:
    """Run (or go on with) the experiment; `overrides` replace the preset's fields (electra_steps, batch,
    seq_len, lr, vocab_size, precision, seeds, finetune_epochs, workers)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset: {preset!r} is unknown; choose one of {sorted(PRESETS)}")
    p = Preset(**{**asdict(PRESETS[preset]), **{k: v for k, v in overrides.items() if v is not None}})
    names = [task_name(train) for train, _ in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"--train: two labeled sets share a name ({names}); rename one file")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tok, shards = out / "tokenizer", out / "shards"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    me = [sys.executable, "-m", "electra_dist"]
    env = child_env()

    def sh(*cmd: str) -> None:
        print(f"\n=== {' '.join(cmd)}", flush=True)
        subprocess.run(list(cmd), check=True, env=env)

    _prepare_data(sh, me, corpus, tok, shards, p, samples_per_shard)

    common = p.model + [
        f"train.seq_len={p.seq_len}",
        f"train.global_batch_size={p.batch}",
        f"train.micro_batch_size={p.batch // nproc}",
        f"optim.lr={p.lr}",
        f"train.precision={p.precision}",
        f"tracking.uri={uri}",
        "tracking.experiment=electra-vs-mlm",
        f"data.num_workers={p.workers}",
    ]
    rows, models = _pretrain_both(sh, out, shards, tok, p, nproc, common)
    if control:  # the same fine-tuning from random weights: does pre-training help at this budget?
        _random_init(out / "random_init", p, common + [f"model.vocab_size={p.vocab_size}", f"data.tokenizer={tok}"])
        rows["random init (control)"] = dict(CONTROL_ROW)
        models["random init (control)"] = out / "random_init"
    _finetune_all(out, models, rows, dict(zip(names, tasks)), tok, p, finetune_lr)
    _write_results(Path(results), rows, corpus, tasks, preset, p, nproc)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def _pretrain_both(sh, out: Path, shards: Path, tok: Path, p: Preset, nproc: int, common: list[str]):
    """ELECTRA for its steps and the MLM baseline for the same pre-training FLOPs (each skipped where its
    final model exists): their result rows and final model directories."""
    electra_cfg = Config.build(p.flavor, common)
    mlm_cfg = Config.build(p.flavor, common + ["objective.kind=mlm"])
    budget = p.electra_steps * p.batch * p.seq_len * flops_per_token(electra_cfg.model, p.seq_len, 0.15, "electra")
    mlm_steps = round(budget / (p.batch * p.seq_len * flops_per_token(mlm_cfg.model, p.seq_len, 0.15, "mlm")))
    launcher = train_launcher(nproc)
    rows: dict[str, dict] = {}
    models: dict[str, Path] = {}
    for name, steps, extra in (
        ("electra", p.electra_steps, []),
        ("mlm", mlm_steps, ["objective.kind=mlm", "objective.mask_prob=0.15"]),
    ):
        run_dir = out / name
        clock = run_dir / "experiment_seconds.json"  # pre-training time over every invocation (resumes)
        if not (OutputDir(run_dir).final / "model.pt").is_file():
            _pretrain(
                sh,
                [*launcher, "--config", p.flavor, "--data", str(shards), "--tokenizer", str(tok)],
                run_dir,
                steps,
                [*common, f"tracking.run_name={name}", *extra],
                clock,
            )
        rows[name] = _pretraining_row(run_dir, steps, clock)
        models[name] = OutputDir(run_dir).final
    return rows, models


def _prepare_data(
    sh, me: list[str], corpus: list[str], tok: Path, shards: Path, p: Preset, samples_per_shard: int
) -> None:
    """The tokenizer and the shards, unless an earlier invocation made them."""
    if not (tok / "spm.model").is_file():
        sh(
            *me,
            "tokenizer",
            "train",
            "--input",
            *corpus,
            "--vocab-size",
            str(p.vocab_size),
            "--lowercase",
            "--out",
            str(tok),
        )
    if not (shards / "manifest.json").is_file():
        sh(
            *me,
            "shards",
            "build",
            "--input",
            *corpus,
            "--tokenizer",
            str(tok),
            "--seq-len",
            str(p.seq_len),
            "--out",
            str(shards),
            "--samples-per-shard",
            str(samples_per_shard),
            "--quiet",
            "--overwrite",
            "--workers",
            str(max(1, p.workers)),
        )


def _finetune_all(out: Path, models: dict[str, Path], rows: dict, tasks: dict, tok: Path, p: Preset, lr) -> None:
    """Every model fine-tuned on every task (results cached per model and task), into its row."""
    for name, model_dir in models.items():
        rows[name]["tasks"] = {
            t: _finetune_cached(out / "finetune" / name.split()[0] / f"{t}.json", model_dir, task, tok, p, lr,
                                label=f"{name} on {t}")
            for t, task in tasks.items()
        }  # fmt: skip
        rows[name]["mean"] = sum(r["mean"] for r in rows[name]["tasks"].values()) / len(tasks)


def _pretrain(sh, launch: list[str], run_dir: Path, steps: int, overrides: list[str], clock: Path) -> None:
    """One pre-training run to `steps` (resumed where an earlier invocation stopped), its time added to `clock`."""
    t0 = time.perf_counter()
    try:
        # fmt: off
        sh(*launch, "--output-dir", str(run_dir), "--max-steps", str(steps), *overrides,
           f"optim.warmup_steps={steps // 10}", f"train.save_interval={max(1, steps // 10)}",
           f"train.eval_interval={max(1, steps // 4)}", "train.eval_samples=1024",
           f"train.log_interval={max(1, min(100, steps // 40))}")
        # fmt: on
    finally:
        spent = time.perf_counter() - t0 + (json.loads(clock.read_text()) if clock.is_file() else 0.0)
        if run_dir.is_dir():
            clock.write_text(json.dumps(spent))


def _pretraining_row(run_dir: Path, steps: int, clock: Path) -> dict:
    """One pre-training run's line of the results: budget, time, speed, last loss and held-out metrics."""
    records = read_metrics(OutputDir(run_dir).metrics)
    evals = [r for r in records if "eval/loss" in r]
    seconds = json.loads(clock.read_text()) if clock.is_file() else float("nan")
    last = evals[-1] if evals else {}
    return {
        "steps": steps,
        "flops": records[-1]["progress/flops"],
        "seconds": seconds,
        "tokens_per_s": sum(r["throughput/tokens_per_s"] for r in records) / len(records),
        "final_loss": records[-1]["loss/total"],
        "eval": {k: v for k, v in last.items() if k.startswith("eval/")},
        "eval_share": sum(r.get("eval/seconds", 0.0) for r in evals) / seconds if seconds else 0.0,
    }


def _random_init(out: Path, p: Preset, overrides: list[str]) -> None:
    """The control: the same model from random weights (seed 0), saved once like a final model."""
    if (out / "model.pt").is_file():
        return
    import torch

    from electra_dist.interop import save_model
    from electra_dist.model import ElectraPretrainer

    torch.manual_seed(0)
    cfg = Config.build(p.flavor, overrides)
    save_model(out, ElectraPretrainer(cfg.model, cfg.objective), cfg)


def _finetune_cached(
    cache: Path, model_dir: Path, task: tuple[str, str], tok: Path, p: Preset, lr: float | None, label: str
) -> dict:
    if cache.is_file():
        print(f"\n=== fine-tune {label}: done before ({cache})", flush=True)
        return json.loads(cache.read_text())
    from electra_dist.finetune import Hyper, finetune, load_task

    print(f"\n=== fine-tune {label}", flush=True)
    hp = Hyper(epochs=p.finetune_epochs, lr=lr or "auto", max_len=p.seq_len)
    ft = finetune(str(model_dir), load_task(task[0], task[1]), hp, seeds=p.seeds, tokenizer_dir=str(tok))
    r = {
        "accuracies": ft.scores("accuracy"),
        "macro_f1": ft.scores("macro_f1"),
        "mean": ft.mean,
        "std": ft.std,
        "majority": ft.baseline[1]["accuracy"],
        "lr": ft.lr,
        "lr_grid": {f"{k:.3g}": v for k, v in ft.grid.items()},
        "seconds": ft.seconds,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps(r, indent=2))
    return r


def _write_results(path: Path, rows: dict, corpus, tasks, preset: str, p: Preset, nproc: int) -> None:
    commit = git_commit(short=True) or "?"
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the table still gets written
        device = None
    device = device or f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"
    names = list(next(iter(rows.values()))["tasks"])
    lines = [
        f"\n## ELECTRA vs MLM at equal pre-training FLOPs (preset {preset}) — {time.strftime('%Y-%m-%d')}, "
        f"commit {commit or '?'}",
        "",
        f"Device: {device}, {nproc} training process(es), {p.precision}. Corpus: "
        f"{', '.join(Path(c).name for c in corpus)}; fine-tuning: {', '.join(names)} ({p.seeds} seeds, "
        f"{p.finetune_epochs} epochs). {p.what}. Seq {p.seq_len}, batch {p.batch}, peak LR {p.lr:g}; ELECTRA "
        f"{p.electra_steps} steps, MLM as many as the same FLOPs buy. Held-out: the shards' eval split.",
        "",
        "| objective | steps | pre-training FLOPs | time | tokens/s | eval share | held-out loss | held-out MLM acc "
        "| held-out RTD AUC | " + " | ".join(f"{n} acc." for n in names) + " | mean |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for name, r in rows.items():
        e = r["eval"]
        pre = (
            f"{r['steps']} | {r['flops']:.3e} | {r['seconds'] / 60:.1f} min | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['eval_share']:.1f} % | {e.get('eval/loss', float('nan')):.3f} | "
            f"{e.get('eval/generator_accuracy', float('nan')):.3f} | "
            + (f"{e['eval/discriminator_auc']:.3f}" if "eval/discriminator_auc" in e else "—")
            if r["steps"]
            else "— | 0 | — | — | — | — | — | —"
        )
        accs = " | ".join(f"{t['mean']:.4f} ± {t['std']:.4f}" for t in r["tasks"].values())
        lines.append(f"| {name} | {pre} | {accs} | {r['mean']:.4f} |")
    first = next(iter(rows.values()))["tasks"]
    lines.append(
        "| majority class | — | — | — | — | — | — | — | — | "
        + " | ".join(f"{t['majority']:.4f}" for t in first.values())
        + " | "
        f"{sum(t['majority'] for t in first.values()) / len(first):.4f} |"
    )
    lines += [
        "",
        "Per seed: "
        + "; ".join(
            f"{name} on {t}: {', '.join(f'{a:.4f}' for a in r['tasks'][t]['accuracies'])}"
            for name, r in rows.items()
            for t in names
        ),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
