"""Segment lines straight into books: replay's hot path, and the seam for a native core.

Nearly every line of a recording is an update of a book that is valid, and all a replay needs
from it is the book it leaves and the counts. ``LineFeed.run`` applies a run of such lines from
their raw bytes, in one loop with no per-line calls beyond the parse and the book's own, and
hands the first line it does not apply back to the caller (``replay.engine``), which handles it
with ``BookFeed.on_message``/``on_meta`` and then calls ``run`` again from the next line. Lines
handed back: anything but a ``msg`` line, control frames, snapshots, books not followed or not
valid, lines that are not JSON, and the first frame past a route's ``limit`` (the caller emits
snapshot rows before it is applied).

The loop has two implementations with one contract. The native core (``kbook/_native.c``, built
at install when a C compiler is there) parses the raw bytes itself and changes the same ``Book``
containers in place, about 1 us a line; it applies only lines of a strict, simple shape and hands
back anything else, so the Python path stays the reference for every odd case. The pure-Python
loop below (about 4 us a line, a sixth of it ``orjson.loads``) runs where the core was not built,
or when ``KBOOK_NATIVE=0`` is set. Both keep this contract, and ``tests/test_native.py`` holds them
to it line for line:

- ``run(lines, start)`` (``start >= 0``) applies ``lines[start:]`` in order and returns the
  index of the first line it did not apply (``len(lines)`` if it applied all); that line has had
  no effect at all;
- each applied line has exactly the effect of ``BookFeed.on_message(msg, clock)`` with
  ``clock = max(clock, recv_ns)``: on the book, on its ``PairStats`` and on ``feed.last_key``;
- it reads ``Route.channel``, ``Route.book`` and ``Route.limit``, and writes only books, stats,
  ``feed.last_key``, the feed's malformed count, ``malformed_lines`` and ``clock``;
- an applied line counted malformed (the Python loops apply a few the core hands back) has its
  index appended to ``malformed_lines``, so that ``kbook verify`` can name its line.

Kraken v2 lines (a ``LineFeed`` of a ``kbook.v2.V2BookFeed``) keep the same contract with v2's
reference, ``V2BookFeed.on_message``: ``run`` applies ``{"channel":"book","type":"update",
"data":[one entry]}`` frames whose entry carries a checksum, of a followed symbol whose route book
is valid and is the only valid book of that symbol (else the feed and replay would disagree on
which book an update is for: v2 frames do not name their depth); it hands back everything else.
The Python loop decodes with ``kbook.v2.decode`` (number lexemes kept as text, see ``kbook.v2``)
and applies with ``on_message`` itself. The native core reads each price and quantity's lexeme
from the bytes as they are (``0.10000000`` stays ten characters, ``0E-8`` is a zero) and hands
back lexemes it cannot key or text it cannot be sure of (a ``-``, an exponent in a price, a
number with many digits, an escape, a duplicate key).

The native core reaches these objects by attribute name; ``NATIVE_INTERFACE`` lists every name it
uses, per class, and is the one place to look before renaming one. The core declares the same
table (``_native.interface()``): at import a core whose table differs (built from another
version of kbook) is not used, and ``tests/test_native.py`` checks that each class has them all.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from kbook.book import Book
from kbook.errors import FrameError
from kbook.feed import NO_SIDE, BookFeed, Outcome, PairStats
from kbook.v2 import V2BookFeed
from kbook.v2 import decode as decode_v2

NATIVE_INTERFACE: dict[str, tuple[str, ...]] = {
    "LineFeed": ("routes", "feed", "clock", "v2"),
    "Route": ("key", "channel", "book", "limit", "stats"),
    "BookFeed": ("last_key", "books"),
    "Book": (
        "valid",
        "depth",
        "scale",
        "asks",
        "bids",
        "_ask_crc",
        "_bid_text",
        "_checksum",
        "exch_ns",
    ),
    "_Side": ("keys", "levels", "top", "dirty"),
    "PairStats": (
        "frames",
        "updates",
        "checksums_ok",
        "checksums_failed",
        "last_ns",
        "become_invalid",
    ),
}
"""Every attribute the native core reads, writes or calls, by the name of the class that has it
(``kbook.book.Book`` and its ``_Side``, ``kbook.feed.BookFeed`` and ``PairStats``, and this
module's ``LineFeed`` and ``Route``). ``Book``'s three checksum caches are in it: the core keeps
them in step with the sides, as ``Book.checksum`` expects."""

_stale_core = False
"""True when a native core was built but declares another interface (an old build)."""

_native_core: Any
try:
    _native_core = importlib.import_module("kbook._native")
except ImportError:  # no C compiler at install: the pure-Python loop does the same work
    _native_core = None
else:
    _declared = getattr(_native_core, "interface", None)
    if _declared is None or _declared() != NATIVE_INTERFACE:
        _native_core, _stale_core = None, True

NEVER = 1 << 126
"""A clock later than any receive time."""

_BAD_LINE = (ValueError, KeyError, TypeError, IndexError)
"""What a line that is not a plain ``msg`` line of a followed book raises before anything changes
(``orjson.JSONDecodeError`` is a ``ValueError``)."""
_BAD_FRAME = (FrameError, AttributeError, IndexError, KeyError, TypeError, ValueError)
"""What a malformed frame raises while it is applied (``BookFeed`` catches the same)."""


@dataclass(eq=False, slots=True)
class Route:
    """A followed book: frames of the wire pair on ``channel`` that ``run`` may apply."""

    key: tuple[str, str]
    """(wire pair, channel) as ``BookFeed.books`` keys it."""
    channel: str
    stats: PairStats
    book: Book | None = None
    """The feed's book for ``key`` once a snapshot or checkpoint created it."""
    limit: int = NEVER
    """Frames received after this clock are handed back (the caller has rows to emit first)."""


def native_core() -> ModuleType | None:
    """The native core when it was built and ``KBOOK_NATIVE=0`` does not turn it off."""
    if os.environ.get("KBOOK_NATIVE", "1") == "0":
        return None
    return _native_core


def core_description() -> str:
    """What runs replay's hot path here, for ``kbook --version``."""
    if native_core() is not None:
        return "native core"
    if _native_core is not None:
        return "pure Python: KBOOK_NATIVE=0"
    if _stale_core:
        return "pure Python: the native core was built from another version (reinstall kbook)"
    return "pure Python: the native core was not built"


class LineFeed:
    """Applies raw segment lines of followed books to a ``BookFeed``'s books."""

    def __init__(self, feed: BookFeed, native: bool | None = None) -> None:
        """``native``: use the native core (True: it must be there), the Python loop (False), or
        the core when there is one (None, the default)."""
        core = native_core() if native is None else _native_core if native else None
        if native and core is None:
            raise RuntimeError("kbook's native core was not built (see README, Performance)")
        self.native = core
        self.feed = feed
        self.v2 = isinstance(feed, V2BookFeed)
        """The feed takes Kraken v2 frames (``run`` applies v2 lines, never v1 ones)."""
        self.routes: dict[str, Route] = {}
        self.clock = -NEVER
        """The largest ``recv_ns`` applied so far (the caller advances it for lines it handles)."""
        self.malformed_lines: list[int] = []
        """Indices (into the ``lines`` of their ``run``) of applied lines counted malformed."""

    def follow(self, pair: str, channel: str) -> Route:
        """Let ``run`` apply frames of ``pair`` (wire name) on ``channel``."""
        route = Route((pair, channel), channel, self.feed.pair_stats(pair))
        route.book = self.feed.books.get(route.key)
        self.routes[pair] = route
        return route

    def run(self, lines: Sequence[bytes], start: int) -> int:
        """Apply ``lines[start:]`` while each is a plain update; see the module docstring."""
        if start < 0:
            raise ValueError(f"start must not be negative, got {start}")
        if self.native is not None and type(lines) is list:
            return self.native.run(self, lines, start)
        if self.v2:
            return self.run_python_v2(lines, start)
        return self.run_python(lines, start)

    def shared_symbols(self) -> set[str]:
        """Followed v2 symbols with a valid book other than their route's (``run`` hands their
        lines back). Only lines of routes are applied in a run, and an update never makes a
        book valid, so this holds for a whole run."""
        routes = self.routes
        return {
            pair
            for (pair, _channel), book in self.feed.books.items()
            if book.valid and pair in routes and routes[pair].book is not book
        }

    def run_python_v2(self, lines: Sequence[bytes], start: int) -> int:
        """``run`` of v2 lines in pure Python: the checks of the module docstring, then
        ``V2BookFeed.on_message``, the reference itself."""
        routes = self.routes
        on_message = self.feed.on_message
        shared = self.shared_symbols()
        clock = self.clock
        for index in range(start, len(lines)):
            try:
                record = decode_v2(lines[index])
                recv_ns = record["recv_ns"]
                msg = record["msg"]
                data = msg["data"]
                entry = data[0]
                symbol = entry["symbol"]
                route = routes[symbol]
            except (*_BAD_LINE, RecursionError):  # a deep nest, where orjson gives a ValueError
                break
            if type(recv_ns) is not int:
                break
            now = recv_ns if recv_ns > clock else clock
            book = route.book
            if (
                now > route.limit
                or book is None
                or not book.valid
                or symbol in shared
                or type(msg) is not dict
                or msg.get("channel") != "book"
                or msg.get("type") != "update"
                or type(data) is not list
                or len(data) != 1
                or type(entry) is not dict
                or entry.get("checksum") is None
            ):
                break
            clock = now
            if on_message(msg, now) is Outcome.MALFORMED:
                self.malformed_lines.append(index)
        else:
            self.clock = clock
            return len(lines)
        self.clock = clock
        return index

    def run_python(self, lines: Sequence[bytes], start: int) -> int:
        """``run`` in pure Python: the reference the native core is held to."""
        loads = orjson.loads
        routes = self.routes
        feed = self.feed
        clock = self.clock
        for index in range(start, len(lines)):
            try:
                record = loads(lines[index])
                recv_ns = record["recv_ns"]
                msg = record["msg"]
                route = routes[msg[-1]]
                payload = msg[1]
                last = msg[-3]
                checksum = last["c"]
            except _BAD_LINE:
                break
            if type(recv_ns) is not int:
                break
            now = recv_ns if recv_ns > clock else clock
            book = route.book
            size = len(msg)
            # A route's channel is "book-N", so this also rules out a msg that is not a list.
            if (
                now > route.limit
                or msg[-2] != route.channel
                or book is None
                or not book.valid
                or checksum is None
                or type(payload) is not dict
                or "as" in payload
                or "bs" in payload
                or (size != 4 and size != 5)
            ):
                break
            clock = now
            stats = route.stats
            stats.frames += 1
            stats.updates += 1
            stats.last_ns = now
            feed.last_key = route.key
            try:
                # One dict, or two ({"a": ...} then {"b": ..., "c": ...}); asks then bids in each.
                apply = book.apply_side
                deep = False
                sides = []
                side = payload.get("a", NO_SIDE)
                if side is not NO_SIDE:
                    deep = apply(book.asks, side)
                    sides.append(side)
                side = payload.get("b", NO_SIDE)
                if side is not NO_SIDE:
                    deep = apply(book.bids, side) or deep
                    sides.append(side)
                if size == 5:
                    side = last.get("a", NO_SIDE)
                    if side is not NO_SIDE:
                        deep = apply(book.asks, side) or deep
                        sides.append(side)
                    side = last.get("b", NO_SIDE)
                    if side is not NO_SIDE:
                        deep = apply(book.bids, side) or deep
                        sides.append(side)
                if deep:
                    book.truncate()
                book.exch_source = sides  # parsed if read (Book.exch_ns)
                expected = int(checksum)  # before checksum(), as BookFeed.on_message does
                if book.checksum() == expected:
                    stats.checksums_ok += 1
                else:
                    book.valid = False
                    stats.checksums_failed += 1
                    stats.become_invalid(now)
            except _BAD_FRAME:
                feed.malformed(stats, book, now)
                self.malformed_lines.append(index)
        else:
            self.clock = clock
            return len(lines)
        self.clock = clock
        return index
