"""The `electra-dist` command line: the parser, one subcommand per job, and dispatch.

The handlers (handlers.py) import their modules only when they run, so `--help` is instant and
a node without (say) MLflow can still build shards.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Callable, Sequence

from electra_dist import errors, logs
from electra_dist.commands import downstream_parsers, parsers

Handler = Callable[[argparse.Namespace], int]


# ---- parser ------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions with line breaks as written, others wrapped; every option's default shown, unless its
    help already says it or it has none."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if not action.help and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"  # argparse prints nothing for an option without help
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra-dist",
        description="Distributed ELECTRA pre-training: tokenizer, shards, training, tracking, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Typical flow:
              electra-dist quickstart                    # everything below, on built-in sample text
              electra-dist tokenizer train --input corpus/*.jsonl.gz --vocab-size 30522 --out tok/
              electra-dist shards build --input corpus/*.jsonl.gz --tokenizer tok/ --seq-len 128 --out shards/
              deepspeed electra_dist/train.py --deepspeed configs/zero2.json --config electra-small \\
                  --data shards/ --tokenizer tok/ --output-dir runs/small
              electra-dist compare --experiment electra --x flops --out compare.png
              electra-dist export --checkpoint runs/small/final --out hf/
            """),
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback beside the one-line error (anywhere on the line; also: ELECTRA_DIST_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers.add_start_commands(sub)
    parsers.add_model_commands(sub)
    parsers.add_data_commands(sub)
    parsers.add_tracking_commands(sub)
    downstream_parsers.add_downstream_commands(sub)
    parsers.add_gpu_commands(sub)
    _show_defaults(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["train"]:
        argv = errors.take_debug_flag(argv)
    if argv[:1] == ["train"]:  # every flag, --help included, belongs to train.py's own parser
        from electra_dist import train

        return train.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(rank=0)  # what the library says goes to stdout, `electra-dist: …`
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return func(args)
    except Exception as e:  # one line naming the path (a bug keeps its traceback): see electra_dist.errors
        return errors.report(e)


if __name__ == "__main__":
    sys.exit(main())
