"""Every command documents itself and is documented in the README; the quickstart is what CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from kbook.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_there_are_commands() -> None:
    assert {"record", "replay", "verify", "simulate", "demo", "plot"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_readme_entry(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kbook", name, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    assert command.help, f"kbook {name} has no docstring"
    for param in command.params:
        if (
            param.name != "help"
            and getattr(param, "help", None) is None
            and param.param_type_name == "option"
        ):
            pytest.fail(f"kbook {name} option {param.name} has no help text")
    assert f"kbook {name}" in README, f"kbook {name} is not in the README"


def kbook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbook", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default_and_plain_metavars(name: str) -> None:
    """The rendered ``--help``: each option that takes a value says its default, and values and
    arguments are named in capitals (``--depth DEPTH``, ``PAIR...``), not ``<int>``/``{pairs}``."""
    done = kbook(name, "--help")
    assert done.returncode == 0, done.stderr
    assert not re.search(r"<[\w\[\], ]+>|\{\w+\}", done.stdout), done.stdout
    rows: dict[str, str] = {}  # option name -> its whole row, lines joined
    section = ""
    for line in done.stdout.splitlines():
        if line and not line.startswith(" "):
            section = line
        elif section == "Options:" and re.match(r"  -", line):
            option = re.findall(r"--[\w-]+", line.split("  ")[1])[0]
            rows[option] = line.strip()
        elif section == "Options:" and line.strip():
            rows[option] += " " + line.strip()
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        row = rows[max(param.opts, key=len)]
        if not param.is_flag:
            assert re.match(r"--[\w-]+ [A-Z]+ ", row), row
            assert "[default: " in row, f"kbook {name} --help: no default shown: {row}"


@pytest.mark.parametrize(
    "args",
    [
        ("record", "BTC/USD", "--depth", "abc"),
        ("replay", "--depth", "10"),
        ("record",),
        ("plot",),
        ("nope",),
        ("simulate", "--drop-after", "-1"),
    ],
)
def test_a_usage_error_is_one_line(args: tuple[str, ...]) -> None:
    done = kbook(*args)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("kbook: error: "), line
    assert line.endswith("--help)"), line


def test_readme_opens_with_the_two_quickstart_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block is not None
    lines = block.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("python3 -m venv .venv")
    assert lines[0].endswith("kbook demo")
    assert lines[1].startswith("python3 -m venv .venv")
    assert lines[1].endswith("pytest -q")
    # .ci/run runs the first README line that calls .venv/bin/pytest: it must be this one.
    assert "grep -m1 '\\.venv/bin/pytest' README.md" in (ROOT / ".ci" / "run").read_text()
    first = next(line for line in README.splitlines() if ".venv/bin/pytest" in line)
    assert first == lines[1]


@pytest.mark.parametrize(
    "path",
    [
        "book.png",  # kbook plot's default --out
        "data/.kbook-record.BTC-USD+ETH-USD.lock",  # kbook record's lock
        "data/.kbook-record.v2.BTC-USD.lock",
        "data/raw/BTC-USD/2026-11-21/BTC-USD.20261121T000000Z.jsonl.zst",
        "data/snapshots/pair=BTC-USD/date=2026-11-21/part-0.parquet",
        "data/.snapshots.tmp-123-0123abcd/_kbook_replay.json",  # a replay under way
        "data/demo/raw/x.jsonl.zst",
        "logs/record.log",  # the cron example
    ],
)
def test_what_the_readme_examples_write_is_ignored_by_git(path: str) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, timeout=30, check=False
    )
    assert done.returncode == 0, f"{path} is not in .gitignore"
