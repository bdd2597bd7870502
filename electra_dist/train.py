"""Pre-train ELECTRA: parse → Trainer → train() → close().

    deepspeed electra_dist/train.py --deepspeed configs/zero2.json --config configs/electra_large.yaml
    torchrun --nproc_per_node 8 electra_dist/train.py --config electra-base --data shards/ --tokenizer tok/
    srun python electra_dist/train.py ...      (one task per rank; ranks from SLURM_*)
    python electra_dist/train.py --config debug --data shards/ --tokenizer tok/   (one process)
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script (the deepspeed/torchrun way): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from electra_dist.config import ConfigError  # noqa: E402

DEFAULT_DEEPSPEED = {"zero_optimization": {"stage": 0}}


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    from electra_dist.cli import config_keys_help

    p = argparse.ArgumentParser(
        prog=prog, description="Pre-train ELECTRA with DeepSpeed ZeRO and megatron-core tensor parallelism.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="config keys (KEY=VALUE):\n" + config_keys_help())
    p.add_argument("--config", default="debug", help="YAML file or flavor (debug, electra-small, electra-base, "
                                                     "electra-large); default: debug")
    p.add_argument("--deepspeed", default=None, metavar="JSON", help="DeepSpeed JSON (configs/zero{0,1,2,3}.json); "
                   "\"auto\" values are filled from the config; default: ZeRO-0")
    p.add_argument("--data", default=None, help="shards (directory, glob, brace list or URL): sets data.shards")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory: sets data.tokenizer")
    p.add_argument("--output-dir", default=None, help="checkpoints, metrics.jsonl, final model: sets output_dir")
    p.add_argument("--max-steps", type=int, default=None, help="sets train.max_steps")
    p.add_argument("--resume", default="auto", help="auto (latest complete checkpoint in the output dir, if any), "
                                                    "never, or a checkpoint PATH")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser("electra-dist train" if argv is not None else "train.py").parse_intermixed_args(argv)
    from electra_dist.config import Config, load_deepspeed_json
    from electra_dist.trainer import Trainer

    overrides = list(args.overrides)
    for flag, key in ((args.data, "data.shards"), (args.tokenizer, "data.tokenizer"),
                      (args.output_dir, "output_dir"), (args.max_steps, "train.max_steps")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    rank0 = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"
    try:
        cfg = Config.build(args.config, overrides)
        ds = load_deepspeed_json(args.deepspeed) if args.deepspeed else DEFAULT_DEEPSPEED
        trainer = Trainer(cfg, ds, resume=args.resume)
    except (ConfigError, FileNotFoundError) as e:
        if rank0:
            print(f"electra-dist: {e}", file=sys.stderr, flush=True)
        return 2
    status = "failed"
    try:
        status = trainer.train()
    finally:
        trainer.close(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
