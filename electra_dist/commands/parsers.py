"""The subcommands of `electra-dist`, by what they are for; each sets its handler (handlers.py)."""

from __future__ import annotations

import argparse
import os

from electra_dist.commands import handlers as h
from electra_dist.config import FLAVORS, keys_help

RAW = argparse.RawDescriptionHelpFormatter


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="debug", help=f"YAML file or flavor name ({', '.join(FLAVORS)}); default: debug")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. model.dropout=0.0 train.max_steps=50",
    )


def add_start_commands(sub) -> None:
    """quickstart, config, params: first steps and sizing"""
    p = sub.add_parser(
        "quickstart",
        help="the whole pipeline on the built-in sample text (a few minutes on CPU)",
        description="Built-in real text → tokenizer → shards → a short DeepSpeed training run "
        "(debug flavor) → an MLflow run → a Hugging Face export, all under --out.",
    )
    p.add_argument("--out", default="quickstart", help="working directory (default ./quickstart)")
    p.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--nproc", type=int, default=1, help="training processes (data parallel; default 1)")
    p.set_defaults(func=h.cmd_quickstart)

    p = sub.add_parser(
        "config",
        help="show or check a resolved config",
        formatter_class=RAW,
        description="Resolve a flavor or YAML file plus overrides, validate it, print it.",
        epilog="config keys:\n" + keys_help(),
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser(
        "show",
        help="print the resolved, validated config as YAML",
        formatter_class=RAW,
        epilog="config keys:\n" + keys_help(),
    )
    add_config_args(show)
    show.set_defaults(func=h.cmd_config_show)

    p = sub.add_parser(
        "params",
        help="count parameters of a config (on the meta device: no memory); --memory: "
        "per-GPU memory of a training step",
        description="Parameter counts; with --memory, the per-GPU memory of a bf16 ZeRO training step "
        "at the config's micro batch (activations measured on fake tensors, no GPU needed) "
        "and the largest power-of-two micro batch within --share of --gpu-memory.",
    )
    add_config_args(p)
    p.add_argument("--memory", action="store_true", help="estimate per-GPU memory (a few seconds)")
    p.add_argument("--dp", type=int, default=8, help="data-parallel ranks sharing ZeRO's partitions (default 8)")
    p.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2], help="default 2")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80: H100)")
    p.add_argument(
        "--share",
        type=float,
        default=0.6,
        help="of --gpu-memory to plan for (default 0.6: room for "
        "the allocator's fragmentation, NCCL buffers, the CUDA context)",
    )
    p.set_defaults(func=h.cmd_params)


def add_model_commands(sub) -> None:
    """export, import-hf, train: weights in and out"""
    p = sub.add_parser(
        "export",
        help="write a checkpoint as Hugging Face ELECTRA models",
        description="Write OUT/discriminator (ElectraForPreTraining) and OUT/generator "
        "(ElectraForMaskedLM), each loadable with transformers' from_pretrained.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run's final/ (config.yaml + model.pt), any complete "
        "training checkpoint (RUN/checkpoints/stepN: ZeRO 0-3, any TP size), RUN/checkpoints (its "
        "latest) or RUN itself",
    )
    p.add_argument("--out", required=True, help="output directory: new, empty, or an earlier export")
    p.add_argument("--force", action="store_true", help="write into --out although it holds other files")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory to copy beside the weights (default: the one named in the checkpoint's config)",
    )
    p.add_argument(
        "--with-frozen-generator",
        action="store_true",
        help="a run trained with objective.generator=frozen holds no generator: also write OUT/generator from its "
        "model.generator_from (as ElectraForMaskedLM); without it only OUT/discriminator is written",
    )
    p.set_defaults(func=h.cmd_export)

    p = sub.add_parser(
        "import-hf",
        help="convert Hugging Face ELECTRA weights into a checkpoint",
        description="Read HF_DIR/discriminator and HF_DIR/generator (or one ELECTRA model "
        "directory) and write our checkpoint to OUT.",
    )
    p.add_argument("hf_dir", help="directory with config.json and model.safetensors / pytorch_model.bin")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.set_defaults(func=h.cmd_import_hf)

    sub.add_parser("train", help="pre-train: the same flags as electra_dist/train.py (see `train --help`)")


def add_data_commands(sub) -> None:
    """tokenizer, shards: text to training data"""
    _add_tokenizer_command(sub)
    _add_shards_command(sub)


def _add_tokenizer_command(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    t = tsub.add_parser(
        "train",
        help="train SentencePiece on raw text",
        description="Train a SentencePiece model with [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4. "
        "Inputs: .txt (blank line between documents), .jsonl (one document per line), "
        "optionally .gz; globs and directories are expanded.",
    )
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text files, globs or directories")
    t.add_argument("--vocab-size", type=int, required=True, help="pieces, specials included (e.g. 30522)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"], help="default: unigram")
    t.add_argument("--lowercase", action="store_true", help="case-fold the text (NFKC + case folding)")
    t.add_argument(
        "--input-sentence-size",
        type=int,
        default=2_000_000,
        help="sentences sampled for training (default 2M: a 250 MB corpus trains in minutes)",
    )
    t.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    t.add_argument("--seed", type=int, default=0, help="sampling seed")
    t.set_defaults(func=h.cmd_tokenizer_train)


def _add_shards_command(sub) -> None:
    p = sub.add_parser("shards", help="build WebDataset shards from raw text")
    ssub = p.add_subparsers(dest="shards_command", metavar="ACTION")
    b = ssub.add_parser(
        "build",
        help="tokenize, pack [CLS] A [SEP] B [SEP] and write tar shards",
        description="Documents → sentences → packed sequences (full, or as the official ELECTRA) → "
        "WebDataset tar shards + manifest.json. Deterministic for the same inputs "
        "and seed, whatever --workers.",
    )
    b.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text files, globs or directories")
    b.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer directory: ours (from `tokenizer train`) or a "
        "published model's (Hugging Face vocab.txt or tokenizer.json, e.g. the --init-from model's "
        "directory); its special-token ids are recorded in the manifest",
    )
    b.add_argument("--seq-len", type=int, required=True, help="tokens per sequence (128 Small, 512 Base/Large)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument(
        "--packing",
        default="full",
        choices=["full", "official"],
        help="full (default): every sequence exactly --seq-len tokens, sentences running on across "
        "documents: no padding, no attention mask, one shape; official: the official ELECTRA "
        "packing (document ends and 5%% short targets leave padding: 8%% of positions at 512)",
    )
    b.add_argument("--samples-per-shard", type=int, default=10000, help="default 10000")
    b.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="tokenizer processes")
    b.add_argument("--seed", type=int, default=0, help="packing seed")
    b.add_argument("--text-field", default="text", help="JSON field holding the text")
    b.add_argument(
        "--part", type=int, default=0, help="with --num-parts: which part this process builds (a SLURM array task id)"
    )
    b.add_argument("--num-parts", type=int, default=1, help="split the build into parts; join them with `shards merge`")
    b.add_argument(
        "--chunk-mb",
        type=float,
        default=1.0,
        help="MB of text per work unit (default 1); units are dealt to workers and --num-parts, and "
        "the output depends on it, not on --workers or --num-parts",
    )
    b.add_argument(
        "--eval-fraction",
        type=float,
        default=0.01,
        help="of the documents of the first 64 work units, held out as the eval split (eval-*.tar, at "
        "most 2000 sequences per part; the trainer evaluates on it); 0: none (default 0.01)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=h.cmd_shards_build)
    mg = ssub.add_parser("merge", help="join the manifests of a --num-parts build into manifest.json")
    mg.add_argument("dir", help="shard directory")
    mg.set_defaults(func=h.cmd_shards_merge)


def add_tracking_commands(sub) -> None:
    """compare, sync: MLflow runs"""
    p = sub.add_parser(
        "compare",
        help="compare MLflow runs: a table and curves against steps, tokens or FLOPs",
        description="Print the runs of an experiment (parameters that differ, final metrics, "
        "tokens/s, MFU) and draw METRIC against step, tokens or training FLOPs.",
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment name (tracking.experiment)")
    p.add_argument("--runs", nargs="+", default=None, metavar="ID", help="run ids or id prefixes (default: all)")
    p.add_argument("--metric", default="loss/discriminator", help="metric to draw (default loss/discriminator)")
    p.add_argument("--x", default="flops", choices=["step", "tokens", "flops"], help="x axis (default flops)")
    p.add_argument("--out", default=None, help="PNG to write")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db (where runs from here were logged)",
    )
    p.set_defaults(func=h.cmd_compare)

    p = sub.add_parser(
        "sync",
        help="send MLflow what a run could not (metrics, params, tags, artifacts, status)",
        description="After a tracking server outage: back-fill the MLflow run of OUTPUT_DIR with every "
        "metrics.jsonl record it lacks, send the params/tags/artifacts and the final "
        "status kept in tracking_pending.json, and create the run if the server was never "
        "reached.",
    )
    p.add_argument("--output-dir", required=True, help="the run's output directory")
    p.add_argument("--tracking-uri", default=None, help="default: the URI the run used (tracking.json)")
    p.add_argument(
        "--experiment",
        default=None,
        help="default: the run's experiment (tracking.json); needed only for runs without one",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to keep retrying (default 120)")
    p.set_defaults(func=h.cmd_sync)


def add_gpu_commands(sub) -> None:
    """gpu-check, bench: the hardware"""
    _add_gpu_check_command(sub)
    _add_bench_command(sub)


def _add_gpu_check_command(sub) -> None:
    p = sub.add_parser(
        "gpu-check",
        help="validate a GPU node inside one short allocation: sanity, kernel tests, a bf16 run, MFU",
        description="CUDA/NCCL/bf16 sanity, the gpu-marked kernel tests, a 20-step ZeRO-2 bf16 run on "
        "real shards (loss finite and falling), tokens/s and MFU of ELECTRA-Base (beside the "
        "HF baseline) and -Large at seq 512, peak memory, each MFU option on/off (Base) and the profiler's "
        "top kernels. "
        "Writes OUT/report.md and OUT/report.json after every section (a run cut short "
        "keeps what finished); each section is stopped at its share of --budget. Exit 1 if "
        "any check failed or did not finish.",
    )
    p.add_argument("--out", default="gpu-report", help="report directory (default ./gpu-report)")
    p.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="seconds for the whole check, divided over the sections "
        "(sanity 4 %%, gpu_tests 12 %%, training_run 20 %%, throughput 40 %%, levers 20 %%, profile 4 %%; "
        "what one leaves goes to the next); default 480, for a 10-minute slot with room for the node's start",
    )
    p.add_argument(
        "--sections",
        default=None,
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        help="comma-separated subset to run, e.g. throughput,profile (default: all six)",
    )
    p.add_argument("--quick", action="store_true", help="toy sizes (seconds): to try the command itself")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (with --quick: how it is tested)")
    p.set_defaults(func=h.cmd_gpu_check)


def _add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT")
    d = bsub.add_parser("data", help="loading + masking throughput in tokens/s per worker")
    d.add_argument("--shards", required=True, help="shard directory (with manifest.json)")
    d.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)")
    d.add_argument("--micro-batch", type=int, default=64, help="sequences per batch (default 64)")
    d.add_argument("--batches", type=int, default=200, help="batches timed after warm-up (default 200)")
    d.set_defaults(func=h.cmd_bench_data)
    t = bsub.add_parser(
        "train",
        help="time full training steps (forward, backward, optimizer); --baseline hf",
        description="Times optimizer steps of the trainer's own DeepSpeed engine on real shards, "
        "padded as training sees them, after warm-up, and prints non-pad tokens/s, "
        "TFLOP/s, MFU (peak by device name; $ELECTRA_DIST_PEAK_TFLOPS overrides) and peak "
        "memory. With --baseline hf, transformers' ElectraForMaskedLM + "
        "ElectraForPreTraining composed the standard way run on the same batches, device "
        "and precision.",
    )
    t.add_argument("--config", default="electra-small", help="flavor or YAML (default electra-small)")
    t.add_argument("--seq-len", type=int, default=128, help="default 128")
    t.add_argument("--micro-batch", type=int, default=32, help="default 32")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    t.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    t.add_argument("--baseline", default=None, choices=["hf"], help="also time transformers' ELECTRA")
    t.add_argument(
        "--shards",
        default=None,
        help="shard directory at --seq-len (default: the built-in sample "
        "text, tokenized and sharded once into the temp dir)",
    )
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    t.add_argument(
        "--deepspeed",
        default=None,
        help="DeepSpeed JSON of our engine (default: what training uses, "
        "configs/zero2.json: ZeRO-2, fp32 gradient accumulation)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the encoder blocks also on CPU (train.compile=true; on GPU they are by default)",
    )
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    t.set_defaults(func=h.cmd_bench_train)
