"""The documentation stays true: every link resolves, and every command line in README.md and docs/
parses with the parser it would meet (electra-dist's, or train.py's for deepspeed / torchrun / srun
lines), with its config and overrides valid; the cheap ones (`config show`, `params`) run for real."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(page: Path) -> list[str]:
    """The logical lines (backslash continuations joined, comments dropped) of the page's bash blocks."""
    lines, block = [], None
    for raw in page.read_text().splitlines():
        if raw.startswith("```"):
            block = [] if raw.strip() == "```bash" and block is None else None
            continue
        if block is not None:
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + raw.strip()
            else:
                lines.append(raw.strip())
    return [" ".join(shlex.split(line, comments=True)) for line in lines if line and not line.startswith("#")]


def commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in command_lines(page):
            words = shlex.split(line)
            if "..." in words or "DIR" in words:  # a sketch, not a command
                continue
            if words[0] == "electra-dist" or "electra_dist/train.py" in words:
                found.append((page.relative_to(ROOT).as_posix(), line))
    return found


def test_every_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_pages_hold_commands_to_check():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/performance.md", "docs/finetuning.md"} <= pages, pages
    assert len(COMMANDS) >= 20, COMMANDS


COMMANDS = commands()


@pytest.mark.parametrize("page,line", COMMANDS, ids=[f"{p}:{line[:60]}" for p, line in COMMANDS])
def test_a_documented_command_parses_with_valid_config(page, line, monkeypatch):
    from electra_dist import train
    from electra_dist.commands.cli import build_parser
    from electra_dist.config import Config

    monkeypatch.chdir(ROOT)  # configs/… paths are relative to the checkout, as the pages say
    words = shlex.split(line)
    try:
        if "electra_dist/train.py" in words:
            args = words[words.index("electra_dist/train.py") + 1 :]
            parsed = train.build_parser().parse_args(args)
            Config.build(parsed.config, parsed.overrides).validate()
        elif words[1] == "train":
            parsed = train.build_parser().parse_args(words[2:])
            Config.build(parsed.config, parsed.overrides).validate()
        else:
            parsed = build_parser().parse_args(words[1:])
            if getattr(parsed, "overrides", None) is not None and getattr(parsed, "config", None):
                Config.build(parsed.config, parsed.overrides).validate()
    except SystemExit as e:  # argparse's way of saying the flags are wrong (0: a --help line)
        if e.code != 0:
            pytest.fail(f"{page}: `{line}` does not parse (exit {e.code})")


@pytest.mark.parametrize(
    "argv", [["config", "show", "--config", "electra-small"], ["params", "--config", "electra-large"]]
)
def test_cheap_documented_commands_run(cli, argv):
    assert any(line == " ".join(["electra-dist", *argv]) for _, line in COMMANDS), argv
    r = cli(*argv)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
