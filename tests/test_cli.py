"""The command line: every subcommand's --help works; bad configs give one clear error."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from electra_dist.commands.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_python_dash_m_entry_point():
    """`python -m electra_dist` is the same command line (one real process; the rest run in this one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "electra_dist", "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("usage: electra-dist")


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_top_level_help(cli):
    r = cli("--help")
    assert r.returncode == 0 and "export" in r.stdout and "config" in r.stdout


@pytest.mark.parametrize("path", list(_subcommand_paths(build_parser())), ids=" ".join)
def test_every_subcommand_help(path, cli):
    r = cli(*path, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: electra-dist " + " ".join(path))


def test_config_help_lists_every_key_with_its_help(cli):
    r = cli("config", "show", "--help")
    assert "model.discriminator.num_heads" in r.stdout and "λ: weight of the discriminator loss" in r.stdout


def test_bad_config_one_error_naming_all(cli):
    r = cli("config", "show", "--config", "debug", "model.discriminator.num_heads=3", "objective.mask_prob=0", "nope=1")
    assert r.returncode == 2
    assert "3 problem(s)" in r.stderr
    for needle in ("model.discriminator.hidden_size: 64", "objective.mask_prob: 0", "nope: unknown key"):
        assert needle in r.stderr


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_params_counts_large_without_allocating(cli):
    r = cli("params", "--config", "electra-large")
    assert r.returncode == 0 and "discriminator 335." in r.stdout


@pytest.mark.slow  # over ~0.7 s: the fast layer stays under a minute
def test_bench_train_with_hf_baseline_runs(capsys, one_rank_env):
    from electra_dist.commands.cli import main

    rc = main(
        [
            "bench",
            "train",
            "--config",
            "debug",
            "--seq-len",
            "64",
            "--micro-batch",
            "4",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--baseline",
            "hf",
            "--grad-accum",
            "2",
        ]
    )
    r = capsys.readouterr()
    assert rc == 0, r.err[-3000:]
    assert "electra_dist" in r.out and "hf " in r.out and "speed-up over HF" in r.out
    assert "our engine: ZeRO-2 from " + str(ROOT / "configs" / "zero2.json") in r.out  # what training builds


def test_every_option_with_a_default_shows_it(cli):
    from electra_dist.commands.cli import build_parser

    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from walk(child)

    missing = []
    for parser in walk(build_parser()):
        text = "".join(parser.format_help().split())  # wrapping aside
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                if "default" not in (action.help or "") and f"(default:{action.default})".replace(" ", "") not in text:
                    missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert not missing, missing
    r = cli("finetune", "--help")
    text = " ".join(r.stdout.split())  # as read, not as wrapped
    assert "(default: 3)" in text and "Small 3e-4, Base 1e-4, Large 5e-5" in text
