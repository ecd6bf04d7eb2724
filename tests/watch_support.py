"""Helpers for the ``kbook watch`` tests: a display that keeps every view, a live watch in a
thread, and reading prices off the plain-text view."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from record_support import FAST, wait_until

from kbook.book import Book
from kbook.live.config import LiveConfig
from kbook.watch import Watcher, WatchOptions, live_config
from kbook.watch.sources import LiveSource
from kbook.watch.view import WatchStatus, render_text

LIVE_TIMINGS = {
    key: value for key, value in FAST.items() if key in {f.name for f in fields(LiveConfig)}
}
"""The recorder's fast timings that a live session has (not its output's)."""


@dataclass
class Screen:
    """A display that keeps every view it is shown (interval 0: one per tick of the loop)."""

    interval_ns: int = 0
    shown: list[tuple[WatchStatus, str]] = field(default_factory=list)

    def show(self, book: Book | None, status: WatchStatus) -> None:
        self.shown.append((status, render_text(book, status, 10)))

    @property
    def last(self) -> WatchStatus:
        return self.shown[-1][0]

    def states_since(self, index: int) -> list[str]:
        return [status.checksum for status, _ in self.shown[index:]]


@contextmanager
def watching(url: str, pair: str = "BTC/USD", **timings: int) -> Iterator[Screen]:
    """A live watch of ``pair`` in a thread, with the recorder's test timings; stopped on exit.
    The API is the one ``url`` says, as for ``kbook watch --url``."""
    screen = Screen()
    options = WatchOptions(pair=pair, url=url)
    source = LiveSource(live_config(options, **{**LIVE_TIMINGS, **timings}))
    assert options.api is not None
    watcher = Watcher(options.pair, screen, url, api=options.api)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            source.run(watcher)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="watch", daemon=True)
    thread.start()
    try:
        yield screen
    finally:
        source.stop()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the watch did not stop"
    assert errors == []


def wait_for(
    screen: Screen, predicate: Callable[[WatchStatus], bool], what: str, start: int = 0
) -> int:
    """Wait until a view from ``start`` on satisfies ``predicate``; the first such view's index."""
    found: list[int] = []

    def seen() -> bool:
        shown = screen.shown[:]
        found[:] = [i for i in range(start, len(shown)) if predicate(shown[i][0])][:1]
        return bool(found)

    wait_until(seen, timeout=10, what=what)
    return found[0]


def best_prices(text: str) -> tuple[str, str]:
    """(best bid, best ask) from a plain-text view: the row under the column headers."""
    lines = text.splitlines()
    row = lines[next(i for i, line in enumerate(lines) if "bid price" in line) + 1].split()
    return row[2], row[4]
