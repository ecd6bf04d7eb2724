"""The ``kbook`` command line: a thin layer that parses options and calls the library.

Every command turns a ``KbookError`` into one line on stderr (``kbook: error: ...``) and that error's
exit code, in one place (``main``). Ctrl+C exits 130 unless a command handles it itself. Set
``KBOOK_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer

from kbook import __version__
from kbook.errors import KbookError

app = typer.Typer(
    name="kbook",
    help="Record the Kraken WebSocket order book losslessly; replay it into Parquet snapshots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kbook {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Record the Kraken WebSocket order book losslessly; replay it into Parquet snapshots."""


def format_ns(ns: int | None) -> str:
    """Integer ns since the epoch as ISO-8601 UTC with milliseconds, or '-'."""
    if ns is None:
        return "-"
    moment = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@app.command()
def verify(
    paths: Annotated[
        list[Path], typer.Argument(help="Segment files, or folders searched for *.jsonl.zst.")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
) -> None:
    """Check every checksum in recorded segments; exit 1 if any failed, 2 for unusable input."""
    from rich.console import Console
    from rich.table import Table

    from kbook.verify import verify_paths

    report = verify_paths(paths)
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        table = Table(title=f"kbook verify: {len(report.files)} segment(s)")
        for column in ("pair", "frames", "snapshots", "updates", "ok", "failed", "dropped"):
            table.add_column(column, justify="left" if column == "pair" else "right")
        for column in ("first receive (UTC)", "last receive (UTC)", "invalid"):
            table.add_column(column)
        for pair, s in sorted(report.pairs.items()):
            table.add_row(
                pair,
                str(s.frames),
                str(s.snapshots + s.checkpoints),
                str(s.updates),
                str(s.checksums_ok),
                str(s.checksums_failed),
                str(s.dropped),
                format_ns(s.first_ns),
                format_ns(s.last_ns),
                f"{s.invalid_ns / 1e9:.3f} s",
            )
        console = Console(width=max(Console().width, 140))
        console.print(table)
        console.print(
            f"checksums ok: {report.checksums_ok}, failed: {report.checksums_failed}"
            + (f", other channels: {report.feed.other_channel_frames}")
            + (f", malformed frames: {report.feed.malformed_frames}")
        )
    for problem in report.problems:
        typer.echo(f"kbook: warning: {problem}", err=True)
    raise typer.Exit(1 if report.checksums_failed else 0)


def main() -> None:
    """Console entry point: run the app, mapping kbook's errors to one-line messages."""
    try:
        # Outside standalone mode click returns the code of a ``typer.Exit`` instead of exiting.
        result = app(standalone_mode=False)
    except KbookError as exc:
        if os.environ.get("KBOOK_DEBUG"):
            raise
        typer.echo(f"kbook: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("kbook: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(result if isinstance(result, int) else 0)
