"""How ``kbook replay`` shows its work: a progress bar while running, a summary at the end.

Kept out of the library functions so notebooks get data (``ReplaySummary``), not terminal output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kbook.units import utc_text
from replay.api import ReplaySummary

SPANS_SHOWN = 5


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr, or None when disabled."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("replay"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("replay", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_summary(summary: ReplaySummary, console: Console | None = None) -> None:
    """Rows per pair, invalid spans, and where the dataset went."""
    console = console or Console(width=max(Console().width, 120))
    table = Table(title=f"kbook replay: {len(summary.segments)} segment(s)")
    for column in ("pair", "book", "rows", "valid", "invalid spans", "failed checksums"):
        table.add_column(column, justify="left" if column in ("pair", "book") else "right")
    table.add_column("first row (UTC)")
    table.add_column("last row (UTC)")
    for pair, s in summary.pairs.items():
        table.add_row(
            pair,
            s.channel,
            str(s.rows),
            str(s.valid_rows),
            str(len(s.invalid_spans)),
            str(s.checksum_failures),
            utc_text(s.first_ts, 3),
            utc_text(s.last_ts, 3),
        )
    console.print(table)
    for pair, s in summary.pairs.items():
        for first, last, cause in s.invalid_spans[:SPANS_SHOWN]:
            console.print(
                f"  {pair} invalid from {utc_text(first, 3)} to {utc_text(last, 3)} (rows): {cause}"
            )
        if len(s.invalid_spans) > SPANS_SHOWN:
            console.print(f"  {pair}: {len(s.invalid_spans) - SPANS_SHOWN} more invalid spans")
    if summary.updated is not None:
        console.print(
            f"updated {summary.updated} pair-day partition(s), {summary.unchanged} unchanged"
        )
    where = f" to {summary.out}" if summary.out is not None else ""
    console.print(
        f"wrote {summary.rows} rows in {len(summary.files)} file(s){where} "
        f"in {summary.seconds:.1f} s ({summary.result.segments_read} segment(s) read)"
    )
