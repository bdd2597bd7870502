"""Pre-train ELECTRA: build → resume → for each step: batch, step, maybe log, maybe save, maybe stop → final save.

    deepspeed electra_dist/train.py --deepspeed configs/zero2.json --config configs/electra_large.yaml
    torchrun --nproc_per_node 8 electra_dist/train.py --config electra-base --data shards/ --tokenizer tok/
    srun python electra_dist/train.py ...      (one task per rank; ranks from SLURM_*)
    python electra_dist/train.py --config debug --data shards/ --tokenizer tok/   (one process)

The pieces live in electra_dist/training/ (build, step, metrics, checkpoints, signals); this file
is the order they run in. The host reads device values only at log steps and before a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script (the deepspeed/torchrun way): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import logging  # noqa: E402

from electra_dist.config import Config, keys_help, suggest_key  # noqa: E402
from electra_dist.errors import take_debug_flag  # noqa: E402

log = logging.getLogger("electra_dist.train")  # also when run as a script (__name__ is then __main__)


def train(run, ckpts, state, until: int | None = None, signals=None) -> str:
    """Run to train.max_steps (or step `until`, then checkpoint and stop: the schedule stays that of
    max_steps); returns "finished", "stopped" (at `until`), or "preempted" after SIGUSR1/SIGTERM.
    `signals`: the StopSignals main() installed before start-up (a signal then is acted on here).
    Each component keeps its own cadence: the logger its log steps, the evaluator its evaluation
    steps, the checkpoint manager its save steps (each checks finiteness before it reads or saves)."""
    from electra_dist import parallel
    from electra_dist.training.evaluate import make_evaluator
    from electra_dist.training.metrics import MetricsLogger
    from electra_dist.training.signals import StopSignals
    from electra_dist.training.step import Stopped, train_step

    evaluator = make_evaluator(run)
    metrics = MetricsLogger(run, state)  # metrics.jsonl + MLflow (rank 0) + console
    signals = signals or StopSignals()
    signals.arm(run.cfg.parallel.stop_timeout, who=f"rank {run.layout.rank}")
    ckpts.guard(before_save=metrics.check_finite, busy=signals.busy)
    batches = iter(run.loader)
    end = min(run.cfg.train.max_steps, until or run.cfg.train.max_steps)
    status, preempted = "failed", False
    try:
        with parallel.collective_timeouts(run.layout.rank, lambda: state.step + 1, run.cfg.parallel.collective_timeout):
            while state.step < end:
                result = train_step(run, batches, stop=signals.asked)
                if isinstance(result, Stopped):  # a rank was signalled: every rank stops before this step
                    _stop_here(run, signals, result, state.step != ckpts.last_saved, state.step)
                    preempted = True
                    break
                state.advance(result.tokens, run.flops_per_token)
                metrics.add(result, state.step)
                metrics.maybe_log(state, evaluator.maybe_run(state.step, before=metrics.check_finite))
                ckpts.maybe_save(state)
            status = ckpts.finish(state, preempted=preempted, signal=signals.received)
    finally:
        signals.restore()
        batches.close()  # stops the loader's worker processes now, not whenever the iterator is collected
        metrics.close(status)
        parallel.destroy(wait=status != "failed")  # never wait on a peer that may be gone
    return status


def _stop_here(run, signals, stopped, unsaved: bool, step: int) -> None:
    """Every rank agreed to stop before this step: the batches it fetched go back to the loader."""
    signals.agreed()
    run.loader.rewind(stopped.fetched)  # the batches just fetched were not trained on
    log.info(
        f"signal received ({signals.describe()}): "
        f"{'checkpointing' if unsaved else 'nothing trained since the checkpoint'} at step {step} and exiting"
    )


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Pre-train ELECTRA with DeepSpeed ZeRO and megatron-core tensor parallelism.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (KEY=VALUE):\n" + keys_help(),
    )
    p.add_argument(
        "--config",
        default="debug",
        help="YAML file or flavor (debug, electra-small, electra-base, electra-large); default: debug",
    )
    p.add_argument(
        "--deepspeed",
        default=None,
        metavar="JSON",
        help='DeepSpeed JSON (configs/zero{0,1,2,3}.json); "auto" values are filled from the config; default: ZeRO-0',
    )
    p.add_argument("--data", default=None, help="shards (directory, glob, brace list or URL): sets data.shards")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory: sets data.tokenizer")
    p.add_argument("--output-dir", default=None, help="checkpoints, metrics.jsonl, final model: sets output_dir")
    p.add_argument("--max-steps", type=int, default=None, help="sets train.max_steps")
    p.add_argument(
        "--until-step",
        type=int,
        default=None,
        metavar="N",
        help="stop at step N with a checkpoint "
        "(the LR schedule stays that of train.max_steps); resume later, on this or another layout",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="start from these weights: our checkpoint/final "
        "or a Hugging Face ELECTRA/BERT directory (sets train.init_from; fresh optimizer and schedule; "
        "build the shards with its tokenizer: shards build --tokenizer PATH)",
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (latest complete checkpoint in the output dir, if any), never, or a checkpoint PATH",
    )
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume although the tokenizer or the shards "
        "differ from the checkpoint's (their checksum, seq len, packing or count); default: refuse, naming both",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback beside the one-line error (also: ELECTRA_DIST_DEBUG=1)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("electra-dist train" if argv is not None else "train.py")
    args, unknown = parser.parse_known_intermixed_args(take_debug_flag(list(sys.argv[1:] if argv is None else argv)))
    flags = [u for u in unknown if u.startswith("--")]
    if unknown:  # `--lr 1e-3`: config keys are set as KEY=VALUE, say which
        parser.error(
            "unrecognized arguments: "
            + " ".join(unknown)
            + "".join(
                f"\n  {f.split('=')[0]} is not a flag; set config keys as KEY=VALUE{suggest_key(f.split('=')[0])}"
                for f in flags
            )
        )
    import warnings

    from electra_dist import logs
    from electra_dist.training.signals import StopSignals

    logs.setup()  # the package's one logger: stdout, global rank 0

    # megatron-core says this once per module and rank; we use neither (the fused paths are ours)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    signals = StopSignals()  # from the first line: a signal during the slow start-up is kept, not fatal
    try:
        return _main(args, signals)
    finally:
        signals.restore()


def _main(args: argparse.Namespace, signals) -> int:
    from electra_dist import logs
    from electra_dist.procs import cuda_visible, own_extensions_dir
    from electra_dist.training.guard import prepare_output_dir
    from electra_dist.training.resolve import resolve

    overrides = list(args.overrides)
    for flag, key in (
        (args.data, "data.shards"),
        (args.tokenizer, "data.tokenizer"),
        (args.output_dir, "output_dir"),
        (args.max_steps, "train.max_steps"),
        (args.init_from, "train.init_from"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    rank0 = logs.global_rank() == 0
    lock = None
    try:
        cfg = Config.build(args.config, overrides)  # the user's config: every problem in one error
        lock = prepare_output_dir(cfg, rank0)  # seconds in, before DeepSpeed's imports
        resolved = resolve(cfg, explicit={o.split("=", 1)[0] for o in args.overrides})  # validated, frozen
        if not cuda_visible():
            own_extensions_dir()
        from electra_dist import parallel
        from electra_dist.training.build import build_run
        from electra_dist.training.checkpoints import CheckpointManager

        ds_json = parallel.load_deepspeed_json(args.deepspeed) if args.deepspeed else parallel.DEFAULT_DEEPSPEED
        run = build_run(resolved, ds_json)
        ckpts = CheckpointManager(run)
        state = ckpts.resume(args.resume, allow_data_change=args.allow_data_change)
        log.info(f"steps {state.step} → {cfg.train.max_steps}")
        train(run, ckpts, state, args.until_step, signals)
    except Exception as e:
        started = "state" in locals()
        return _failed(e, 1 if started else 2, rank0 or started)
    finally:
        if lock is not None:
            lock.release()
    return 0


def _failed(e: Exception, code: int, speak: bool) -> int:
    """One line (see electra_dist.errors); a bug keeps its traceback. Ranks other than 0 repeat a
    start-up mistake only where it is theirs (a path only they write)."""
    from electra_dist import errors, parallel
    from electra_dist.data.loader import CorruptShardError
    from electra_dist.training.step import LoaderWorkerDied, loader_worker_died

    if isinstance(e, RuntimeError) and str(e).startswith("DataLoader worker (pid"):  # torch's SIGCHLD handler
        e = LoaderWorkerDied(loader_worker_died(e))
    if isinstance(
        e, (parallel.CollectiveTimeout, parallel.UntrustedCheckpointError, LoaderWorkerDied, CorruptShardError)
    ):
        e = errors.UserError(str(e))
    if not speak and errors.one_line(e) is not None and not isinstance(e, OSError):
        return code
    return errors.report(e, code)


if __name__ == "__main__":
    sys.exit(main())
