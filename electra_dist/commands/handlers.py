"""One function per `electra-dist` subcommand: read the parsed arguments, call the library, print.

Each imports what it needs when it runs, so `--help` is instant and a node without (say)
MLflow can still build shards.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from electra_dist.config import Config
from electra_dist.errors import UserError, claim_output_dir
from electra_dist.rundir import OutputDir

log = logging.getLogger(__name__)


def load_config(args: argparse.Namespace) -> Config:
    return Config.build(args.config, list(args.overrides))


def cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(load_config(args).to_yaml())
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import torch

    from electra_dist.model import ElectraPretrainer, count_parameters

    cfg = load_config(args)
    with torch.device("meta"):
        model = ElectraPretrainer(cfg.model, cfg.objective)
    d, t = count_parameters(model.encoder_tower), count_parameters(model)
    if model.generator is None:  # objective.generator=frozen: trained parameters are the discriminator's
        gen = f"generator frozen ({cfg.model.generator_from}, not trained)"
    else:
        gen = f"generator {count_parameters(model.generator) / 1e6:.2f}M (shared embeddings counted in both)"
    print(f"flavor {cfg.flavor}: discriminator {d / 1e6:.2f}M, {gen}, total {t / 1e6:.2f}M")
    if args.memory:
        from electra_dist.training.memory import estimate, largest_micro_batch

        budget = args.share * args.gpu_memory
        for m in (
            estimate(cfg, cfg.train.micro_batch_size, args.dp, args.zero_stage),
            largest_micro_batch(cfg, budget, args.dp, args.zero_stage),
        ):
            print(
                f"micro batch {m.micro_batch:>4} × seq {cfg.train.seq_len}, bf16, ZeRO-{args.zero_stage} over DP "
                f"{args.dp}: {m.total:.1f} GiB per GPU (weights {m.weights:.1f}, gradients {m.gradients:.1f}, "
                f"optimizer {m.optimizer:.1f}, activations {m.activations:.1f})"
            )
        print(
            f"the second line: the largest power-of-two micro batch within {args.share:.0%} of {args.gpu_memory:g} GiB"
            f" ({budget:.0f} GiB); the global batch must still be a multiple of micro batch × DP"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from electra_dist.interop import export_hf, load_model

    model, cfg = load_model(args.checkpoint)
    tokenizer = args.tokenizer or cfg.data.tokenizer or None
    _requires("transformers", "export writes Hugging Face models and their tokenizer with transformers")
    if args.with_frozen_generator:
        if cfg.objective.generator != "frozen":
            raise UserError(
                f"--with-frozen-generator: {args.checkpoint} was trained with a joint generator (it is exported)"
            )
        from electra_dist.interop.mlm import read_mlm
        from electra_dist.model.layers import LayerFactory
        from electra_dist.training.build import frozen_generator

        model.attach_generator(
            frozen_generator(read_mlm(cfg.model.generator_from), cfg, LayerFactory(cfg.model.initializer_range), 0)
        )
    claim_output_dir(args.out, "export", args.force)
    out = export_hf(model, args.out, tokenizer)
    wrote = [f"{out / 'discriminator'} (ElectraForPreTraining)"] if model.discriminator is not None else []
    if model.generator is not None or model.frozen_generator is not None:
        wrote.append(f"{out / 'generator'} (ElectraForMaskedLM)")
    print("wrote " + " and ".join(wrote))
    return 0


def _requires(module: str, why: str) -> None:
    """Before anything is written: a missing optional dependency is one line naming the extra."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{why}, which is not installed: pip install 'electra-dist[dev]' (or {module}>=4.57)")


def cmd_import_hf(args: argparse.Namespace) -> int:
    from electra_dist.interop import import_hf, save_model

    model = import_hf(args.hf_dir)
    cfg = Config(flavor="imported", model=model.cfg)
    save_model(args.out, model, cfg)
    print(f"wrote {args.out} (config.yaml + model.pt)")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from electra_dist.data.tokenizer import train_tokenizer

    tok, stats = train_tokenizer(
        args.input,
        args.vocab_size,
        args.out,
        model_type=args.model_type,
        lowercase=args.lowercase,
        input_sentence_size=args.input_sentence_size,
        text_field=args.text_field,
        seed=args.seed,
    )
    _report_text(stats)
    print(f"wrote {args.out}: {tok.vocab_size} pieces, specials {tok.special.to_dict()}")
    return 0


def cmd_shards_build(args: argparse.Namespace) -> int:
    from electra_dist.data.shards import build_shards

    r = build_shards(
        args.input,
        args.tokenizer,
        args.seq_len,
        args.out,
        samples_per_shard=args.samples_per_shard,
        workers=args.workers,
        seed=args.seed,
        text_field=args.text_field,
        part=args.part,
        num_parts=args.num_parts,
        overwrite=args.overwrite,
        progress=not args.quiet,
        packing=args.packing,
        chunk_chars=int(args.chunk_mb * (1 << 20)),
        eval_fraction=args.eval_fraction,
    )
    _report_text(r.stats)
    m = r.manifest
    print(
        f"wrote {len(m['shards'])} shard(s), {m['samples']:,} sequences, {m['tokens']:,} tokens "
        f"({m['tokens'] / max(1, m['text_tokens']):.1%} of the text's {m['text_tokens']:,}) to {args.out} "
        f"in {r.seconds:.1f}s: {r.tokens_per_second / 1e3:,.0f}k tokens/s with {args.workers} worker(s); "
        f"held out for evaluation: {m['eval_samples']:,} sequences in {len(m['eval_shards'])} eval shard(s)"
    )
    if m["tokens"] < 0.9 * m["text_tokens"]:
        print(
            f"warning: the shards hold only {m['tokens'] / max(1, m['text_tokens']):.1%} of the text's tokens "
            f"(--packing {m.get('packing', 'official')}: --packing official truncates what overflows each "
            f"example; --packing full keeps nearly all)",
            file=sys.stderr,
        )
    return 0


def cmd_shards_merge(args: argparse.Namespace) -> int:
    from electra_dist.data.shards import merge_manifests

    m = merge_manifests(args.dir)
    print(f"merged {m['num_parts']} parts: {len(m['shards'])} shards, {m['samples']:,} sequences")
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from electra_dist.commands.bench import bench_data

    for w in args.workers:
        print(bench_data(args.shards, w, args.micro_batch, args.batches).line(), flush=True)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from electra_dist.commands import quickstart

    return quickstart.run(args.out, steps=args.steps, nproc=args.nproc)


def cmd_finetune(args: argparse.Namespace) -> int:
    from electra_dist.finetune import finetune, load_task

    with _finetune_session(args, "finetune", Path(args.train).stem) as tracker:  # --out is claimed first
        task = load_task(args.train, args.test, args.task, args.text_field, args.label_field, args.text_pair_field)
        finetune(args.model, task, _hyper(args), args.seeds, args.tokenizer, args.out, tracker)
        if args.out:
            log.info("finetune: wrote the best seed's model to %s (transformers: %s + AutoTokenizer)", args.out,
                     {"qa": "AutoModelForQuestionAnswering", "token": "AutoModelForTokenClassification"}.get(
                         task.kind, "AutoModelForSequenceClassification"))  # fmt: skip
    return 0


def cmd_glue(args: argparse.Namespace) -> int:
    from electra_dist.finetune.glue import glue_score, markdown_table, run_glue

    with _finetune_session(args, "glue", "summary") as tracker:  # the table's run; each task has its own
        per_task = (lambda name: _finetune_tracker(args, "glue", name)) if args.experiment else None
        table = run_glue(args.model, args.data_dir, args.tasks, _hyper(args), args.seeds, args.from_mnli, per_task,
                         args.out, args.tokenizer)  # fmt: skip
        if tracker is not None:
            dev = {f"glue/{t}_{m}": v for t, row in table.items() for m, v in row.items() if m != "score"}
            tracker.log_metrics(dev | {"glue/score": glue_score(table)}, step=0)
    print(markdown_table(table))
    return 0


def _hyper(args: argparse.Namespace):
    from electra_dist.finetune import Hyper

    keys = ("epochs", "lr", "layer_decay", "batch_size", "max_len", "stride", "dev_fraction")
    return Hyper(**{k: getattr(args, k) for k in keys if hasattr(args, k)})


@contextlib.contextmanager
def _finetune_session(args: argparse.Namespace, command: str, task: str):
    """CPU threads, the --out claim and the MLflow run (FINISHED, or FAILED on an error) around one command."""
    import torch

    from electra_dist.procs import cpu_threads

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: at least 1")
    if not torch.cuda.is_available():
        n, why = (args.threads, "--threads") if args.threads else cpu_threads()
        torch.set_num_threads(n)
        log.info("%s: %d CPU thread%s (%s)", command, n, "s" if n > 1 else "", why)
    if args.out:
        claim_output_dir(args.out, command, args.force)
    tracker = _finetune_tracker(args, command, task)
    status = "failed"
    try:
        yield tracker
        if tracker is not None and args.out:
            tracker.log_artifact(args.out, "model")
        status = "finished"
    finally:
        if tracker is not None:
            tracker.close(status)


def _finetune_tracker(args: argparse.Namespace, command: str = "finetune", task: str | None = None):
    if not args.experiment:
        return None
    import json

    from electra_dist.tracking import resolve_tracking_uri
    from electra_dist.tracking.mlflow_tracker import MLflowTracker

    model = Path(args.model).resolve()
    tags = {"task": task, "model": str(model)}
    for run_dir in (model, *model.parents[:3]):  # RUN/final, RUN/checkpoints/stepN: the pre-training run
        tracking = OutputDir(run_dir).tracking
        if tracking.is_file():
            tags["pretraining_run_id"] = str(json.loads(tracking.read_text()).get("run_id"))
            break
    model_name = model.parent.name if model.name in ("final", "discriminator") else model.name
    name = f"{command}-{model_name}-{task}"
    t = MLflowTracker(
        resolve_tracking_uri(args.tracking_uri or ""), args.experiment, name, None, tags=tags, system_metrics=False
    )
    t.log_params({k: v for k, v in vars(args).items() if k not in ("func",)})
    return t


def cmd_experiment(args: argparse.Namespace) -> int:
    from electra_dist.commands import experiment

    if len(args.train) != len(args.test):
        raise ValueError(
            f"{len(args.train)} --train file(s) but {len(args.test)} --test file(s); give one test "
            "file per labeled set, in the same order"
        )
    experiment.run(
        args.corpus,
        list(zip(args.train, args.test)),
        args.out,
        args.results,
        preset=args.preset,
        nproc=args.nproc,
        control=not args.no_control,
        finetune_lr=args.finetune_lr,
        electra_steps=args.electra_steps,
        batch=args.batch,
        seq_len=args.seq_len,
        seeds=args.seeds,
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from electra_dist.commands import compare
    from electra_dist.tracking import resolve_tracking_uri
    from electra_dist.tracking.sync import reachable

    uri = resolve_tracking_uri(args.tracking_uri or "")
    reachable(uri)
    curves = compare.load_runs(uri, args.experiment, args.runs, args.metric, args.x)
    print(compare.table(curves, args.metric))
    if args.out:
        out = compare.plot(curves, args.metric, args.x, Path(args.out), f"{args.experiment}: {args.metric}")
        print(f"wrote {out}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from electra_dist.tracking.sync import sync_run

    r = sync_run(args.output_dir, args.tracking_uri, args.experiment, timeout=args.timeout)
    if r.unsent:
        return 1
    print(
        f"run {r.run_id} at {r.uri} holds every record of {OutputDir(args.output_dir).metrics}"
        + (f" and the {r.pending} item(s) that were pending" if r.pending else "")
        + f"; status {r.status}"
    )
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from electra_dist import parallel
    from electra_dist.commands import training_deepspeed_json
    from electra_dist.commands.bench import bench_train

    ds, source = (
        (parallel.load_deepspeed_json(args.deepspeed), args.deepspeed) if args.deepspeed else training_deepspeed_json()
    )
    results = bench_train(
        args.config,
        args.seq_len,
        args.micro_batch,
        args.precision,
        args.steps,
        args.warmup,
        args.baseline,
        args.compile,
        list(args.overrides),
        args.shards,
        args.grad_accum,
        ds,
    )
    r0 = results[0]
    print(
        f"{args.config}: seq {args.seq_len}, micro batch {args.micro_batch} × {args.grad_accum} accumulation, "
        f"{args.precision}, device {r0.device}, real shards ({r0.tokens / (r0.batch * r0.seq_len * r0.steps):.1%} "
        f"non-pad), {r0.flops_per_token / 1e9:.3f} GFLOP/token (generator head at masked positions); our engine: "
        f"ZeRO-{parallel.zero_stage(ds)} from {source}"
    )
    for r in results:
        print(r.line())
    if len(results) == 2:
        print(f"speed-up over HF: {results[0].tokens_per_second / results[1].tokens_per_second:.2f}x")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from electra_dist.commands import gpucheck

    report = gpucheck.run(
        args.out, quick=args.quick, allow_cpu=args.allow_cpu, budget=args.budget, sections=args.sections
    )
    print(
        f"gpu-check {'PASSED' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s (budget "
        f"{args.budget:.0f} s): {Path(args.out) / 'report.md'}, {Path(args.out) / 'report.json'}"
    )
    return 0 if report["ok"] else 1


def _report_text(stats) -> None:
    d = stats.to_dict()
    print(
        f"read {d['files']} file(s): {d['documents']:,} documents, {d['empty_documents']} empty, "
        f"{d['bad_lines']} bad JSON lines, {d['replaced_bytes']} non-UTF-8 bytes replaced"
    )
    for p in stats.problems[:5]:
        print(f"  {p}")
    if d.get("truncated_files"):
        print(
            f"warning: {d['truncated_files']} gzip file(s) were cut short or damaged; what was read before the "
            "damage is kept (see above)",
            file=sys.stderr,
        )
    if d["long_sentences"]:
        print(
            f"warning: {d['long_sentences']:,} sentence(s) had no sentence end for longer than one piece "
            "(one-line documents?) and were cut into pieces; check the text splits into lines or "
            "sentences if that is not expected",
            file=sys.stderr,
        )
