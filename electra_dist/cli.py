"""The `electra-dist` command line: one entry point, a subcommand per job.

Each subcommand's module is imported only when it runs, so `--help` is instant and a node
without (say) MLflow can still build shards.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Callable, Sequence

from electra_dist.config import FLAVORS, Config, ConfigError

Handler = Callable[[argparse.Namespace], int]


def config_keys_help() -> str:
    """Every dotted config key with its type, default (of the base dataclass) and help."""
    lines = []
    defaults = Config().flat()
    for key, typ, meta in Config().fields():
        choices = f" {{{','.join(meta['choices'])}}}" if meta.get("choices") else ""
        lines.append(f"  {key} ({typ.__name__}{choices}, default {defaults[key]!r})\n      {meta.get('help', '')}")
    return "\n".join(lines)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="debug",
                   help=f"YAML file or flavor name ({', '.join(FLAVORS)}); default: debug")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. model.dropout=0.0 train.max_steps=50")


def load_config(args: argparse.Namespace) -> Config:
    return Config.build(args.config, list(args.overrides))


# ---- handlers ----------------------------------------------------------------------------

def cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(load_config(args).to_yaml())
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import torch

    from electra_dist.model import ElectraPretrainer, count_parameters

    cfg = load_config(args)
    with torch.device("meta"):
        model = ElectraPretrainer(cfg.model, cfg.objective)
    d, g, t = (count_parameters(m) for m in (model.discriminator, model.generator, model))
    print(f"flavor {cfg.flavor}: discriminator {d / 1e6:.2f}M, generator {g / 1e6:.2f}M "
          f"(shared embeddings counted in both), total {t / 1e6:.2f}M")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from electra_dist.checkpoint import export_hf, load_model

    model, cfg = load_model(args.checkpoint)
    tokenizer = args.tokenizer or cfg.data.tokenizer or None
    out = export_hf(model, args.out, tokenizer)
    print(f"wrote {out / 'discriminator'} (ElectraForPreTraining) and {out / 'generator'} (ElectraForMaskedLM)")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from electra_dist.checkpoint import import_hf, save_model

    model = import_hf(args.hf_dir)
    cfg = Config(flavor="imported", model=model.cfg)
    save_model(args.out, model, cfg)
    print(f"wrote {args.out} (config.yaml + model.pt)")
    return 0


# ---- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra-dist",
        description="Distributed ELECTRA pre-training: tokenizer, shards, training, tracking, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Typical flow:
              electra-dist config show --config electra-small
              electra-dist export --checkpoint runs/debug/final --out hf/
            """),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("config", help="show or check a resolved config", formatter_class=raw,
                       description="Resolve a flavor or YAML file plus overrides, validate it, print it.",
                       epilog="config keys:\n" + config_keys_help())
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved, validated config as YAML", formatter_class=raw,
                           epilog="config keys:\n" + config_keys_help())
    add_config_args(show)
    show.set_defaults(func=cmd_config_show)

    p = sub.add_parser("params", help="count parameters of a config (on the meta device: no memory)")
    add_config_args(p)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("export", help="write a checkpoint as Hugging Face ELECTRA models",
                       description="Write OUT/discriminator (ElectraForPreTraining) and OUT/generator "
                                   "(ElectraForMaskedLM), each loadable with transformers' from_pretrained.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.yaml + model.pt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to copy beside the weights "
                                                     "(default: the one named in the checkpoint's config)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-hf", help="convert Hugging Face ELECTRA weights into a checkpoint",
                       description="Read HF_DIR/discriminator and HF_DIR/generator (or one ELECTRA model "
                                   "directory) and write our checkpoint to OUT.")
    p.add_argument("hf_dir", help="directory with config.json and model.safetensors / pytorch_model.bin")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.set_defaults(func=cmd_import_hf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return func(args)
    except ConfigError as e:
        print(f"electra-dist: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"electra-dist: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
