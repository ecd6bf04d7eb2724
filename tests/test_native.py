"""The native core (``kbook/_native.c``) against the pure-Python loop of ``LineFeed.run``.

Both implement one contract (the docstring of ``kbook.lines``), but not one return value: the core
hands back every line that is not of a strict simple shape, also lines the Python loop would
apply, because the caller applies a handed-back line through ``BookFeed.on_message``, to the same
effect. So what must be equal is what the whole driver loop leaves, replay's loop in short:
``run`` as far as it goes, the general path for the line it hands back, ``run`` again from the
next line. ``drive`` is that loop; ``observe`` takes everything it can change (each book's keys,
levels, checksum pieces, dirty flags, checksum caches, scale and validity, every ``PairStats``,
the feed's counts and ``last_key``, ``LineFeed.clock``), at the end of every chunk of lines.

The lines come from a simulated market (clean data, where the core must apply every line the
Python loop applies, or it is not the fast path), from the real captures, and from hypothesis,
which mutates valid updates at every level of the text: numbers the core must refuse, escapes,
whitespace, odd shapes, odd checksums, odd receive times, broken bytes. Mutated updates carry
the checksum they really have (computed on a copy of the reference book) often enough that books
stay valid across them, so what the general path leaves in a book (a 25-digit price, a widened
scale, a non-ASCII digit) is then met by the core.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import sysconfig
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perf_support import general

from kbook.book import CHECKSUM_LEVELS, Book, _Side, checksum_piece
from kbook.captures import read_capture
from kbook.errors import FrameError
from kbook.feed import NO_SIDE, BookFeed
from kbook.lines import NATIVE_INTERFACE, NEVER, LineFeed, native_core
from kbook.segment import frame_line, is_json_text, meta_line
from kbook.sim import Market, V2Market
from kbook.units import SECOND
from kbook.v2 import V2BookFeed
from kbook.v2 import decode as decode_v2

from conftest import V1_CAPTURES

try:
    from kbook import _native
except ImportError:  # no C compiler at install: nothing to compare (see test_native_core_is_built)
    _native = None

needs_core = pytest.mark.skipif(_native is None, reason="kbook's native core was not built")

Key = tuple[str, str]
"""(wire pair, channel), as ``BookFeed.books`` keys a book."""
BASE_NS = 1_700_000_000 * SECOND
STEP_NS = 1_000_000
"""Receive times of generated lines: ``BASE_NS + i * STEP_NS``."""


def fixed_clock() -> float:
    """The markets' timestamps do not depend on when the test runs."""
    return 1_700_000_000.0


# -- the driver -----------------------------------------------------------------------------------


def side_state(side: _Side) -> dict[str, Any]:
    """What a book side holds (``keyed`` is a memo of price text -> key, left out: the core
    computes keys without it)."""
    pieces = []
    for key in side.keys[:CHECKSUM_LEVELS]:
        level = side.levels.get(key)
        pieces.append(
            None if level is None else checksum_piece(level[0]) + checksum_piece(level[1])
        )
    return {
        "keys": list(side.keys),
        "levels": dict(side.levels),
        "level_types": {type(level) for level in side.levels.values()},
        "top": list(side.top),
        "top_in_step": side.top == pieces,
    }


def caches(book: Book, strict: bool = False) -> dict[str, Any]:
    """The dirty flags and the checksum caches they do not mark stale (a stale cache is never
    read: ``checksum()`` recomputes it); ``strict``: all of them, as they are."""
    asks, bids = book.asks.dirty, book.bids.dirty
    return {
        "asks_dirty": asks,
        "bids_dirty": bids,
        "ask_crc": book._ask_crc if strict or not asks else None,
        "bid_text": book._bid_text if strict or not bids else None,
        "checksum_cache": book._checksum if strict or not (asks or bids) else None,
    }


def caches_sound(book: Book) -> bool:
    """Every cache not marked stale holds what ``checksum()`` would compute afresh."""
    ask_crc = zlib.crc32("".join(book.asks.top).encode())
    bid_text = "".join(book.bids.top).encode()
    asks_ok = book.asks.dirty or book._ask_crc == ask_crc
    bids_ok = book.bids.dirty or book._bid_text == bid_text
    sum_ok = (
        book.asks.dirty
        or book.bids.dirty
        or book._checksum == zlib.crc32(book._bid_text, book._ask_crc)
    )
    return asks_ok and bids_ok and sum_ok


def book_state(book: Book, final: bool, strict: bool = False) -> dict[str, Any]:
    """Everything of a book either path can change. ``checksum()`` refreshes the caches, so it
    is called only at the very end, after they were read.

    The caches of an invalid book are compared only for soundness (unless ``strict``): they are
    never read again as they are, since the one way back to valid is ``apply_snapshot``, which
    marks both sides stale, and ``checksum()`` (compared at the end) gives the same number from
    sound caches, stale or not; of a valid book, those not marked stale. The Python loop and
    ``on_message`` leave them differently after a ``c`` that ``int`` refuses (see
    ``test_a_checksum_int_refuses_leaves_the_same_caches``)."""
    state: dict[str, Any] = {
        "valid": book.valid,
        "exch_ns": book.exch_ns,
        "depth": book.depth,
        "scale": book.scale,
        "asks": side_state(book.asks),
        "bids": side_state(book.bids),
        "caches_sound": caches_sound(book),
    }
    if book.valid or strict:
        state["caches"] = caches(book, strict)
    if final:
        state["checksum"] = book.checksum()
    return state


def observe(
    feed: BookFeed, clock: int, final: bool = False, strict: bool = False
) -> dict[str, Any]:
    """A comparable snapshot of everything ``run`` and the general path may change."""
    return {
        "books": {key: book_state(book, final, strict) for key, book in feed.books.items()},
        "stats": {pair: dataclasses.asdict(stats) for pair, stats in feed.stats.items()},
        "malformed_frames": feed.malformed_frames,
        "other_channel_frames": feed.other_channel_frames,
        "last_key": feed.last_key,
        "connection_id": feed.connection_id,
        "adopt_connection": feed.adopt_connection,
        "depths": dict(feed.depths) if isinstance(feed, V2BookFeed) else None,
        "clock": clock,
    }


@dataclass
class Driven:
    """What ``drive`` left."""

    feed: BookFeed
    states: list[dict[str, Any]] = field(default_factory=list)
    """``observe`` at the end of every chunk, then at the end with ``checksum()``."""
    handed_back: list[int] = field(default_factory=list)
    """Indices (into all the lines) of the lines ``run`` handed back."""


def chunked(lines: list[Any], sizes: Sequence[int]) -> Iterator[list[Any]]:
    """``lines`` cut into lists of ``sizes`` (cycled; one list when empty), as replay reads a
    segment in pieces: each is a new list ``run`` starts on."""
    if not sizes:
        yield lines
        return
    start = 0
    for turn in range(len(lines)):
        if start >= len(lines):
            return
        size = sizes[turn % len(sizes)]
        yield lines[start : start + size]
        start += size


def drive(
    lines: list[Any],
    native: bool,
    routes: Sequence[Key] = (("XBT/USD", "book-10"),),
    chunks: Sequence[int] = (),
    period: int | None = None,
    strict: bool = False,
    v2: bool = False,
) -> Driven:
    """Replay's loop over ``lines`` with the native core or the Python loop.

    ``period`` sets each route's ``limit`` to the next multiple of it after the clock, as
    replay's sampler grid does, so that lines past it are handed back; ``strict`` as for
    ``book_state``; ``v2``: the lines are Kraken v2 ones, for a ``V2BookFeed``."""
    feed = V2BookFeed() if v2 else BookFeed()
    line_feed = LineFeed(feed, native=native)
    followed = [line_feed.follow(pair, channel) for pair, channel in routes]

    def sync() -> None:
        for route in followed:
            route.book = feed.books.get(route.key)
            if period is not None:
                route.limit = (line_feed.clock // period + 1) * period

    driven = Driven(feed)
    sync()
    offset = 0
    for chunk in chunked(lines, chunks):
        index = line_feed.run(chunk, 0)
        while index < len(chunk):
            driven.handed_back.append(offset + index)
            line_feed.clock = general(feed, chunk[index], line_feed.clock)
            sync()
            index = line_feed.run(chunk, index + 1)
        offset += len(chunk)
        driven.states.append(observe(feed, line_feed.clock, strict=strict))
    driven.states.append(observe(feed, line_feed.clock, final=True, strict=strict))
    return driven


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """Where two states first differ, readably (pytest's diff of two whole books is not)."""
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r} (types {type(a).__name__}, {type(b).__name__})"
    if isinstance(a, dict):
        assert isinstance(b, dict)
        for key in [*a, *(key for key in b if key not in a)]:
            if key not in a or key not in b:
                return f"{path}[{key!r}]: only in the {'first' if key in a else 'second'}"
            found = first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        for index, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{path}[{index}]")
            if found:
                return found
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} != {len(b)}, then {a[len(b) :]!r} != {b[len(a) :]!r}"
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def assert_same(native: Driven, python: Driven) -> None:
    """The two runs left the same state at every chunk end."""
    assert len(native.states) == len(python.states)
    for chunk, (ours, theirs) in enumerate(zip(native.states, python.states, strict=True)):
        difference = first_difference(ours, theirs)
        assert difference is None, f"after chunk {chunk} (native vs python): {difference}"


def drive_both(
    lines: list[Any],
    routes: Sequence[Key] = (("XBT/USD", "book-10"),),
    chunks: Sequence[int] = (),
    period: int | None = None,
    strict: bool = False,
    v2: bool = False,
) -> tuple[Driven, Driven]:
    """Both drives, held equal."""
    native = drive(lines, True, routes, chunks, period, strict, v2)
    python = drive(lines, False, routes, chunks, period, strict, v2)
    assert_same(native, python)
    return native, python


def record_line(recv_ns: int, seq: int, text: str) -> bytes:
    """A segment ``msg`` line as ``run`` gets it: no trailing newline."""
    return frame_line(recv_ns, seq, text, True).rstrip(b"\n")


# -- a simulated market -----------------------------------------------------------------------


@needs_core
@pytest.mark.parametrize(
    ("depth", "seed", "updates"),
    [(10, 1, 4000), (25, 2, 3000), (100, 3, 3000), (500, 6, 2000), (1000, 4, 2000)],
)
def test_simulated_markets_leave_the_same_books(depth: int, seed: int, updates: int) -> None:
    """Two markets interleaved (one at ``depth``, one at 10), with faults a real stream has:
    wrong checksums, books dropped until the next snapshot, checkpoints, heartbeats.
    On such clean text the core must apply every line the Python loop applies: that is the
    point of it, and proves the comparison ran through the native path."""
    rng = random.Random(seed)
    markets = {
        "XBT/USD": Market("XBT/USD", depth, seed, clock=fixed_clock),
        "ETH/USD": Market("ETH/USD", 10, seed, clock=fixed_clock),
    }
    texts: list[str | bytes] = [market.snapshot_frame(7) for market in markets.values()]
    resubscribe = {pair: -1 for pair in markets}  # updates until a voided book's new snapshot
    for _ in range(updates):
        pair = "XBT/USD" if rng.random() < 0.7 else "ETH/USD"
        market = markets[pair]
        roll = rng.random()
        resubscribe[pair] -= 1
        if resubscribe[pair] == 0:
            texts.append(market.snapshot_frame(7))
        elif roll < 0.003:
            texts.append(market.update_frame(7, bad_checksum=True))
            resubscribe[pair] = 4
        elif roll < 0.006:
            texts.append(market.snapshot_frame(7))
        elif roll < 0.008:
            asks, bids = market.window()
            checkpoint = {"type": "checkpoint", "pair": pair, "channel": market.channel_name}
            texts.append(meta_line(0, {**checkpoint, "asks": asks, "bids": bids}))
        elif roll < 0.02:
            texts.append('{"event":"heartbeat"}')
        else:
            texts.append(market.update_frame(7))
    lines = []
    for i, text in enumerate(texts):
        recv_ns = BASE_NS + i * STEP_NS
        if isinstance(text, bytes):  # a meta line: its receive time put right
            lines.append(text.replace(b'"recv_ns":0', b'"recv_ns":%d' % recv_ns).rstrip(b"\n"))
        else:
            lines.append(record_line(recv_ns, i, text))
    routes = [("XBT/USD", f"book-{depth}"), ("ETH/USD", "book-10")]
    native, python = drive_both(lines, routes, [1, 250, 17, 600], 500 * STEP_NS, strict=True)
    assert native.handed_back == python.handed_back
    assert len(native.handed_back) < len(lines) // 10
    for pair, market in markets.items():
        book = native.feed.books[(pair, market.channel_name)]
        stats = native.feed.stats[pair]
        assert stats.checksums_ok > stats.checksums_failed + stats.dropped
        if book.valid:
            assert (book.top_asks(depth), book.top_bids(depth)) == market.window()
    for state in native.states:
        for book in state["books"].values():
            assert book["asks"]["top_in_step"]
            assert book["bids"]["top_in_step"]


# -- the real captures ----------------------------------------------------------------------------


@pytest.mark.slow
@needs_core
@pytest.mark.parametrize("name", sorted(V1_CAPTURES))
def test_real_captures_leave_the_same_books(captures_dir: Path, name: str) -> None:
    """Every v1 capture, every book of it followed, through both: same state, and the core
    applies every update the Python loop applies (Kraken's own text is the simple shape)."""
    frames = read_capture(captures_dir / name)
    lines = [
        frame_line(recv_ns, seq, text, is_json_text(text)).rstrip(b"\n")
        for seq, (recv_ns, text) in enumerate(frames)
    ]
    books: set[Key] = set()
    for _, text in frames:
        msg = orjson.loads(text) if is_json_text(text) else None
        if type(msg) is list and str(msg[-2]).startswith("book-"):
            books.add((msg[-1], msg[-2]))
    assert books
    for chunks, period in (((), None), ((1, 9, 300), SECOND // 10)):
        native, python = drive_both(lines, sorted(books), chunks, period, strict=True)
        assert native.handed_back == python.handed_back
        updates = sum(stats.updates for stats in native.feed.stats.values())
        assert updates == V1_CAPTURES[name]
        assert all(stats.checksums_failed == 0 for stats in native.feed.stats.values())


# -- mutated lines --------------------------------------------------------------------------------


class Raw(str):
    """A JSON token written as it is: what orjson would not print (``1e400``, 25 digits, a lone
    surrogate escape)."""


class Obj(list[tuple[str, Any]]):
    """A JSON object as ``(key, value)`` pairs: keys may repeat, in the order given."""


CHECKSUM_SLOT = Raw("@checksum@")
"""Where ``"c"``'s value goes, once the checksum the message really has is known."""


@dataclass
class Style:
    """How ``dump`` prints: whitespace between tokens, ``\\u`` escapes inside strings."""

    rng: random.Random
    space: float = 0.0
    escape: float = 0.0

    def gap(self) -> str:
        if self.space and self.rng.random() < self.space:
            return "".join(self.rng.choice(" \t\r\n") for _ in range(self.rng.randint(1, 3)))
        return ""

    def string(self, text: str) -> str:
        if not self.escape:
            return orjson.dumps(text).decode()
        out = []
        for char in text:
            if self.rng.random() >= self.escape:
                out.append(orjson.dumps(char).decode()[1:-1])
            elif ord(char) >= 0x10000:
                high, low = divmod(ord(char) - 0x10000, 0x400)
                out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
            elif char == "/" and self.rng.random() < 0.5:
                out.append("\\/")
            else:
                out.append(f"\\u{ord(char):04x}")
        return '"' + "".join(out) + '"'


def dump(value: object, style: Style) -> str:
    """JSON text of ``value`` (``Obj`` for objects with repeated keys, ``Raw`` for tokens)."""
    gap = style.gap
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj | dict):
        pairs = value if isinstance(value, Obj) else list(value.items())
        inner = ",".join(
            f"{gap()}{style.string(key)}{gap()}:{gap()}{dump(item, style)}{gap()}"
            for key, item in pairs
        )
        return "{" + (inner or gap()) + "}"
    if isinstance(value, list | tuple):
        inner = ",".join(f"{gap()}{dump(item, style)}{gap()}" for item in value)
        return "[" + (inner or gap()) + "]"
    if isinstance(value, str):
        return style.string(value)
    if type(value) is int:  # any size: orjson refuses integers beyond 64 bits
        return str(value)
    return orjson.dumps(value).decode()


def right_checksum(book: Book | None, msg: object) -> int | None:
    """The checksum the book has after ``msg`` (an update decoded as ``on_message`` gets it),
    on a copy; None when there is none to have (no valid book, a malformed message)."""
    if book is None or not book.valid or type(msg) is not list or len(msg) < 4:
        return None
    book = copy.deepcopy(book)
    try:
        for payload in msg[1:-2]:
            for side, name in ((book.asks, "a"), (book.bids, "b")):
                levels = payload.get(name, NO_SIDE)
                if levels is not NO_SIDE:
                    book.apply_side(side, levels)
        book.truncate()
        return book.checksum()
    except (FrameError, AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


@dataclass
class Update:
    """One v1 update line under construction, in parts the mutations change."""

    recv_ns: object
    seq: int
    channel_id: object
    dicts: list[Obj]
    channel: object
    pair: object
    record: Obj = field(default_factory=Obj)
    """The record's pairs besides ``recv_ns`` and ``msg`` (set by ``Scenario.update``)."""
    shape: Callable[[list[object]], list[object]] = list
    """Changes the message's element list (extra or missing elements)."""
    tail: Callable[[bytes], bytes | bytearray | memoryview | str] = bytes
    """Changes the finished line's bytes."""

    def levels(self) -> list[list[object]]:
        """Every level of the message (each a list the mutations may change in place)."""
        found: list[list[object]] = []
        for payload in self.dicts:
            for key, value in payload:
                if key in ("a", "b") and isinstance(value, list):
                    found.extend(level for level in value if isinstance(level, list))
        return found

    def msg(self) -> list[object]:
        return self.shape([self.channel_id, *self.dicts, self.channel, self.pair])


def parse_update(text: str, recv_ns: int, seq: int) -> Update:
    """A market's update text as ``Update`` parts (``c`` becomes ``CHECKSUM_SLOT``)."""
    msg = orjson.loads(text)
    dicts = [
        Obj((key, CHECKSUM_SLOT if key == "c" else value) for key, value in payload.items())
        for payload in msg[1:-2]
    ]
    return Update(recv_ns, seq, msg[0], dicts, msg[-2], msg[-1])


def pick_level(update: Update, rng: random.Random) -> list[object]:
    """A level of the update to change (one is added when it has none)."""
    levels = update.levels()
    if not levels:
        level: list[object] = ["27120.00000", "1.00000000", "1700000000.000000"]
        update.dicts[0].append(("a", [level]))
        return level
    return rng.choice(levels)


def price_text(level: list[object]) -> str:
    price = level[0] if level else None
    return price if isinstance(price, str) and price else "27120.00000"


PRICES: list[Callable[[str], object]] = [
    lambda p: p + "0",  # more decimals, same price: the scale widens, the key stays
    lambda p: p + "7",  # more decimals, a new price
    lambda p: p.rstrip("0"),  # fewer decimals, maybe "27120."
    lambda p: p.rstrip("0").rstrip("."),
    lambda p: p.split(".")[0],  # no dot
    lambda p: p.split(".")[0] + ".",
    lambda p: "." + p.split(".")[-1],
    lambda p: "+" + p,
    lambda p: " " + p,
    lambda p: p + " ",
    lambda p: "00" + p,
    lambda p: "-" + p,
    lambda p: "1" * 25,
    lambda p: "9" * 18,
    lambda p: "9" * 19 + ".5",
    lambda p: "0." + "0" * 17 + "1",
    lambda p: "0",
    lambda p: "0.0",
    lambda p: "",
    lambda p: ".",
    lambda p: "1e3",
    lambda p: "2.712E4",
    lambda p: "1e-30",
    lambda p: "1e-99",
    lambda p: "1_000.5",
    lambda p: p.replace("1", "\u0661"),  # Arabic-Indic digit one
    lambda p: "NaN",
    lambda p: "0x10",
    lambda p: 27120.5,
    lambda p: 27120,
    lambda p: None,
    lambda p: [p],
    lambda p: Raw('"\\ud800"'),
    lambda p: Raw('"\\ud83d\\ude00"'),
]
"""Price texts made from a real one (``p``): the core must refuse or key each exactly."""

VOLUMES: list[object] = [
    "0E-8",
    "1e-5",
    "1.0e0",
    "-1.0",
    "",
    ".",
    "0.",
    "0.0.0",
    "00",
    "0",
    "1.2.3",
    "0" * 30,
    "1" * 25,
    "\u0660",
    "\u0661",
    "\u00b2",
    " 1",
    "1 ",
    "+1",
    "0x1",
    "1,5",
    "NaN",
    5,
    0,
    1.5,
    None,
    True,
    ["1"],
    Raw('"\\u0030"'),
    Raw('"\\u0031.0"'),
    Raw('"\\ud800"'),
    Raw('"0.5\\u0000"'),
]
"""Volumes: zero or not as decimals, with exponents, odd digits, not text."""

LEVELS: list[Callable[[str, object], list[object]]] = [
    lambda p, v: [p],
    lambda p, v: [],
    lambda p, v: [p, v, "1700000000.000000", "r"],
    lambda p, v: [p, v, [[1, {"x": []}]], {"k": None}],
    lambda p, v: [p, v, Raw("1e400")],
    lambda p, v: [p, v, Raw("1e99")],
    lambda p, v: [p, v, Raw("-9999999999999999999")],
    lambda p, v: [p, v, Raw("123456789012345678901234567")],
    lambda p, v: [p, v, Raw("-0.0e-0"), True, False, None],
    lambda p, v: [p, v, "\u00e9", "\\"],
    lambda p, v: [p, v, Raw('"\\ud83d\\ude00"')],
    lambda p, v: [p, v, Raw('"\\x"')],
    lambda p, v: [p, v, Raw("01")],
    lambda p, v: [p, v, Raw("1.")],
    lambda p, v: [
        p,
        v,
        Raw("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"),
    ],
    lambda p, v: [v, p],
]
"""Level arrays around a price and volume: short, long, nested, with odd tokens."""


def form(choices: Sequence[Any], rng: random.Random, index: int | None) -> Any:
    """``choices[index]``, or a random one."""
    return rng.choice(choices) if index is None else choices[index]


def m_price(update: Update, rng: random.Random, index: int | None = None) -> None:
    level = pick_level(update, rng)
    if level:
        level[0] = form(PRICES, rng, index)(price_text(level))


def m_volume(update: Update, rng: random.Random, index: int | None = None) -> None:
    level = pick_level(update, rng)
    if len(level) >= 2:
        level[1] = form(VOLUMES, rng, index)


def m_level(update: Update, rng: random.Random, index: int | None = None) -> None:
    level = pick_level(update, rng)
    price, volume = price_text(level), level[1] if len(level) > 1 else "1.0"
    level[:] = form(LEVELS, rng, index)(price, volume)


def m_new_level(update: Update, rng: random.Random) -> None:
    """A new level near the top (so it is in the checksum), odd price, or one price twice."""
    level = pick_level(update, rng)
    price = price_text(level)
    new = rng.choice(
        [
            price[:-1] + "3",
            price + "3",
            price.split(".")[0] + ".5",
            price,
            rng.choice(PRICES)(price),
        ]
    )
    volume = rng.choice(["0.10000000", "2", "0.00000000", rng.choice(VOLUMES)])
    for key, value in update.dicts[-1]:
        if key in ("a", "b") and isinstance(value, list):
            value.insert(rng.randint(0, len(value)), [new, volume, "1700000000.000000"])
            return
    update.dicts[-1].insert(0, (rng.choice("ab"), [[new, volume, "1700000000.000000"]]))


def m_split(update: Update, rng: random.Random) -> None:
    """One dict as two (``{"a":...}`` then ``{"b":...,"c":...}``), maybe ``c`` in both."""
    if len(update.dicts) != 1:
        return
    payload = update.dicts[0]
    asks = Obj(pair for pair in payload if pair[0] == "a") or Obj([("a", [])])
    rest = Obj(pair for pair in payload if pair[0] != "a")
    if rng.random() < 0.4:
        asks.append(("c", rng.choice([CHECKSUM_SLOT, "1", "0", "x", None, 5, Raw('"\\u0031"')])))
    update.dicts = [asks, rest]


def m_three_dicts(update: Update, rng: random.Random) -> None:
    update.dicts.insert(0, Obj([("a", [])] if rng.random() < 0.5 else []))
    if len(update.dicts) < 3:
        update.dicts.insert(0, Obj())


def m_duplicate_key(update: Update, rng: random.Random) -> None:
    """A key twice in one dict (JSON allows it; the last one wins)."""
    payload = rng.choice(update.dicts)
    if not payload:
        payload.append(("a", []))
    key, value = rng.choice(list(payload))
    decoy = rng.choice([[], [["27120.00000", "1.0"]], "1", None, CHECKSUM_SLOT])
    if rng.random() < 0.5:
        payload.insert(0, (key, decoy))
    else:
        payload.append((key, decoy))
        payload.append((key, value))


def m_snapshot_key(update: Update, rng: random.Random) -> None:
    payload = rng.choice(update.dicts)
    key = rng.choice(["as", "bs"])
    payload.insert(rng.randint(0, len(payload)), (key, rng.choice([[], None, [["1.0", "1.0"]]])))


def m_extra_key(update: Update, rng: random.Random) -> None:
    payload = rng.choice(update.dicts)
    extra = rng.choice(
        [
            ("x", {"y": [1, "z", None, 1.5e-7]}),
            ("r", True),
            ("cc", "1"),
            ("", []),
            ("A", [["1.0", "1.0"]]),
            ("\u00e9", 1),
            ("c ", "1"),
            ("\x00", Raw("1e99")),
        ]
    )
    payload.insert(rng.randint(0, len(payload)), extra)


def m_odd_side(update: Update, rng: random.Random) -> None:
    payload = rng.choice(update.dicts)
    side = (
        rng.choice("ab"),
        rng.choice([None, "abc", {}, {"1.0": "2.0"}, [["1.0", "2.0"], 5], 7, [[]], [None]]),
    )
    payload.insert(rng.randint(0, len(payload)), side)


def m_checksum_place(update: Update, rng: random.Random) -> None:
    """``c`` missing, or moved to the first of two dicts."""
    for payload in update.dicts:
        payload[:] = [pair for pair in payload if pair[0] != "c"]
    if rng.random() < 0.5:
        update.dicts[0].append(("c", CHECKSUM_SLOT))


def m_payload(update: Update, rng: random.Random) -> None:
    """The first payload not an object, or an empty one."""
    choice = rng.randrange(3)
    if choice == 0:
        update.dicts.insert(0, Obj())
    elif choice == 1:
        first = update.dicts[0]
        update.shape = lambda msg: [msg[0], [list(pair) for pair in first], *msg[2:]]
    else:
        update.shape = lambda msg: [msg[0], None, *msg[1:]]


def m_channel_id(update: Update, rng: random.Random) -> None:
    update.channel_id = rng.choice(
        [
            "x",
            Obj([("a", [])]),
            [],
            -1,
            1.5,
            None,
            True,
            Raw("123456789012345678901234567"),
            Raw("1e400"),
            Raw("-9999999999999999999"),
            Raw("9223372036854775808"),
            Raw("1E+99"),
            Raw("-"),
            Raw("0123"),
        ]
    )


def m_channel(update: Update, rng: random.Random) -> None:
    update.channel = rng.choice(
        ["book-25", "book-10", "book-100", "ticker", "BOOK-10", "book-10 ", "book-", 10, None]
    )


def m_pair(update: Update, rng: random.Random) -> None:
    update.pair = rng.choice(
        ["ETH/USD", "XBT/USD", "DOT/USD", "XBT/USD ", "xbt/usd", "XBT/EUR", None, 5, ["XBT/USD"]]
    )


def m_shape(update: Update, rng: random.Random) -> None:
    """Elements added or missing around the dicts."""
    update.shape = rng.choice(
        [
            lambda msg: [msg[0], msg[1], "x", *msg[2:]],
            lambda msg: msg[1:],
            lambda msg: [*msg, "extra"],
            lambda msg: msg[:-1],
            lambda msg: [msg[0], msg[1], msg[1], *msg[2:]],
            lambda msg: [msg],
            lambda msg: [],
        ]
    )


def m_recv_ns(update: Update, rng: random.Random) -> None:
    now = update.recv_ns if type(update.recv_ns) is int else BASE_NS  # changed once already
    update.recv_ns = rng.choice(
        [
            now + 0.5,
            str(now),
            now - 50 * STEP_NS,  # back in time
            0,
            -now,
            9_223_372_036_854_775_807,  # 19 digits, the largest int64
            9_223_372_036_854_775_808,  # 19 digits, past int64
            10**19 + 7,  # 20 digits
            Raw("1234567890123456789012345"),
            Raw("-0"),
            Raw("1.7e18"),
            Raw(f"{now}.0"),
            Raw(f"{now}e0"),
            Raw(f"0{now}"),
            Raw(f"-{now}"),
            True,
            None,
            [now],
        ]
    )


def m_record(update: Update, rng: random.Random) -> None:
    """Keys of the record: extra, missing, repeated, in another order, ``meta``/``raw``."""
    choice = rng.randrange(9)
    pairs = update.record
    if choice == 0:
        pairs.append(("x", {"y": [1, {"z": None}], "w": Raw("1e99")}))
    elif choice == 1:
        pairs[:] = [pair for pair in pairs if pair[0] != "seq"]
    elif choice == 2:
        pairs.append(("meta", {"type": "connect"}))
    elif choice == 3:
        pairs.append(("raw", "x"))
    elif choice == 4:
        pairs.insert(0, ("recv_ns", rng.choice([1, "x", update.recv_ns])))
    elif choice == 5:
        pairs.insert(0, ("msg", [1, {"a": [], "c": "0"}, "book-10", "XBT/USD"]))
    elif choice == 6:
        pairs.reverse()
    elif choice == 7:
        pairs.append(("note", "\u00e9\u20ac"))
    else:
        pairs.append((rng.choice(["recv_ns ", "msg ", "Msg", "\u00e9"]), 1))


def m_bytes(update: Update, rng: random.Random) -> None:
    """The finished line broken: cut, garbage after or before, bad UTF-8, not bytes."""
    choice = rng.randrange(8)
    cut = rng.random()
    if choice == 0:
        update.tail = lambda line: line[: int(len(line) * cut)]
    elif choice == 1:
        junk = rng.choice([b"x", b"}", b",", b" ", b"\x00", b"\r", b"\n", b"{}", b"\xff", b" \t"])
        update.tail = lambda line: line + junk
    elif choice == 2:
        lead = rng.choice([b"\xef\xbb\xbf", b" ", b"\n", b"x", b"\t\r"])
        update.tail = lambda line: lead + line
    elif choice == 3:
        update.tail = lambda line: line.replace(b'"seq"', b'"s\xffq"')
    elif choice == 4:
        update.tail = lambda line: b""
    elif choice == 5:
        update.tail = bytearray
    elif choice == 6:
        update.tail = lambda line: line.decode("utf-8", "replace")
    else:
        update.tail = memoryview


FLIP_BYTES = b'{}[],:" \\/\t0123456789.eE+-tfnul"abcr\x00\x7f\xff'
"""What ``m_flip`` writes: JSON's structure and number characters, and a few it refuses."""


def m_flip(update: Update, rng: random.Random) -> None:
    """One to three bytes of the finished line replaced, inserted or deleted: whatever the
    core's parser accepts of that must be what orjson reads."""
    edits = [
        (rng.randrange(3), rng.random(), FLIP_BYTES[rng.randrange(len(FLIP_BYTES))])
        for _ in range(rng.randint(1, 3))
    ]

    def flip(line: bytes) -> bytes:
        data = bytearray(line)
        for kind, where, byte in edits:
            at = int(len(data) * where)
            if kind == 0 and at < len(data):
                data[at] = byte
            elif kind == 1:
                data.insert(at, byte)
            elif at < len(data):
                del data[at]
        return bytes(data)

    update.tail = flip


MUTATIONS: dict[str, Callable[[Update, random.Random], None]] = {
    "price": m_price,
    "volume": m_volume,
    "level": m_level,
    "new_level": m_new_level,
    "split": m_split,
    "three_dicts": m_three_dicts,
    "duplicate_key": m_duplicate_key,
    "snapshot_key": m_snapshot_key,
    "extra_key": m_extra_key,
    "odd_side": m_odd_side,
    "checksum_place": m_checksum_place,
    "payload": m_payload,
    "channel_id": m_channel_id,
    "channel": m_channel,
    "pair": m_pair,
    "shape": m_shape,
    "recv_ns": m_recv_ns,
    "record": m_record,
    "bytes": m_bytes,
    "flip": m_flip,
}
"""Changes to a valid update, by name (hypothesis shows the names of a failing case)."""

FORMS: dict[str, tuple[Callable[[Update, random.Random, int], None], Sequence[Any]]] = {
    "price": (m_price, PRICES),
    "volume": (m_volume, VOLUMES),
    "level": (m_level, LEVELS),
}
"""Mutations that pick one of a list of forms, for ``name=index``."""


def arabic(digits: str) -> str:
    return "".join(chr(0x0660 + int(d)) for d in digits)


CHECKSUMS: list[Callable[[int], str]] = [
    lambda c: f'"{c}"',  # the right one: the book stays valid
    lambda c: f'"{c ^ 1}"',
    lambda c: f'"00{c}"',
    lambda c: f'"{c:025d}"',
    lambda c: f"{c}",
    lambda c: f"{c}.0",
    lambda c: f"{c}e0",
    lambda c: f'"{c + 2**32}"',
    lambda c: f'"{c + 2**64}"',
    lambda c: f'" {c}"',
    lambda c: f'"{c} "',
    lambda c: f'"+{c}"',
    lambda c: f'"{c:_}"',
    lambda c: '"' + arabic(str(c)) + '"',
    lambda c: '"' + "".join(f"\\u{ord(d):04x}" for d in str(c)) + '"',
    lambda c: "null",
    lambda c: '""',
    lambda c: "true",
    lambda c: '"-0"',
    lambda c: '"0"',
    lambda c: f"[{c}]",
    lambda c: f'"{c}x"',
]
"""How ``c`` is written, given the checksum the message really has."""


def control_texts(rng: random.Random, pair: str) -> list[str]:
    return [
        '{"event":"heartbeat"}',
        f'{{"connectionID":{rng.randrange(3)},"event":"systemStatus","status":"online"}}',
        f'{{"event":"subscriptionStatus","status":"subscribed","pair":"{pair}"}}',
        f'[5,[["27120.00000","0.1","1700000000.000000","b","l",""]],"trade","{pair}"]',
        f'[1,{{"a":[]}},"book-10","{pair}"]',  # no checksum: applied unverified
        f'[1,{{"a":[["27120.00000","1.00000000"]]}},"book-10","{pair}"]',
    ]


JUNK: list[bytes] = [
    b"",
    b" ",
    b"null",
    b"[1,2]",
    b"{}",
    b'{"recv_ns":7}',
    b'{"recv_ns":7,"msg":[]}',
    b'{"recv_ns":7,"msg":null}',
    b'{"recv_ns":7,"msg":"x"}',
    b'{"recv_ns":7,"msg":[1,2,3,4]}',
    b'{"recv_ns":7,"msg":[1,{},"book-10","XBT/USD"]}',
    b'{"recv_ns":7,"msg":[1,{"c":"0"},"book-10","XBT/USD"]}',
    b'{"recv_ns":7,"msg":{"event":"x"}}',
    b'{"recv_ns":7,"raw":"x"}',
    b'{"recv_ns":7,"meta":"x"}',
    b'{"recv_ns":7,"meta":{"type":"session_start"}}',
    b'{"recv_ns":7,"msg":[1,{"a":[]},{"b":[]},{"c":"1"},"book-10","XBT/USD"]}',
    b'{"recv_ns":7,"msg":[1,{"a":[]},{"b":[],"c":"1"},"book-10","XBT/USD"]',
    b'{"recv_ns":7,"msg":[1,{"a":[]},{"b":[],"c":"1"},"book-10","XBT/USD"]}}',
    b'{"recv_ns":-9223372036854775808,"msg":[1,{"a":[],"c":"0"},"book-10","XBT/USD"]}',
]
"""Lines that are no plain update in any reading."""

SNAPSHOT_PRICES: list[Callable[[str], str]] = [
    lambda p: p,
    lambda p: p + "00",  # two more decimals: the core pads the market's prices to them
    lambda p: p.rstrip("0"),  # fewer decimals: the market's prices widen the scale
    lambda p: p.split(".")[0],  # whole numbers: scale 0
    lambda p: p + "0" * 9,  # scale 14 (or more): the core's 18 digits run short
]
"""Snapshot price forms (form 0 keeps the whole window; the others keep one to three levels
of each side, so that some snapshots leave a side empty-ish and the updates refill it)."""

PAIRS = {"XBT/USD": 10, "ETH/USD": 25, "XDG/USD": 100}
"""The followed books: Kraken's smallest depth, whose levels are exactly the checksum's 10, and
deeper ones, where the checksum covers only the top of the book (updates here carry the checksum
of the book they reach)."""
ROUTES: tuple[Key, ...] = tuple((pair, f"book-{depth}") for pair, depth in PAIRS.items())


class Scenario:
    """Builds segment lines from steps against the markets of ``PAIRS``, keeping the general path's feed
    (``plain``) in step, so that a mutated update can carry the checksum it really has."""

    def __init__(self, seed: int) -> None:
        self.markets = {
            pair: Market(pair, depth, seed, clock=fixed_clock) for pair, depth in PAIRS.items()
        }
        self.plain = BookFeed()
        self.clock = -(1 << 126)
        self.lines: list[Any] = []
        for market in self.markets.values():
            self.add_text(market.snapshot_frame(1))

    @property
    def now(self) -> int:
        return BASE_NS + len(self.lines) * STEP_NS

    def add(self, line: Any) -> None:
        self.lines.append(line)
        self.clock = general(self.plain, line, self.clock)

    def add_text(self, text: str) -> None:
        self.add(record_line(self.now, len(self.lines), text))

    def update(
        self, pair: str, mutations: Sequence[str], seed: int, checksum: int, noise: int
    ) -> None:
        """The market's next update, changed by ``mutations``, printed with ``noise`` (1:
        whitespace, 2: escapes, 3: both), ``c`` written the ``checksum``-th way."""
        market = self.markets[pair]
        update = parse_update(market.update_frame(1), self.now, len(self.lines))
        update.record = Obj([("seq", update.seq)])
        rng = random.Random(seed)
        for name in mutations:
            base, _, index = name.partition("=")  # "price=3": the fourth of PRICES
            if index:
                FORMS[base][0](update, rng, int(index))
            else:
                MUTATIONS[base](update, rng)
        record = Obj([("recv_ns", update.recv_ns), *update.record, ("msg", update.msg())])
        if update.recv_ns is None:
            record = Obj(pair for pair in record if pair[0] != "recv_ns")
        style = Style(rng, space=0.3 if noise & 1 else 0.0, escape=0.2 if noise & 2 else 0.0)
        text = style.gap() + dump(record, style) + style.gap()
        try:
            msg = orjson.loads(text.replace(CHECKSUM_SLOT, '"0"')).get("msg")
        except (orjson.JSONDecodeError, AttributeError):
            msg = None
        book = None
        if type(msg) is list and len(msg) >= 4:
            with_key = (msg[-1], msg[-2])
            if all(type(part) is str for part in with_key):
                book = self.plain.books.get(with_key)
        right = right_checksum(book, msg)
        value = market.checksum() if right is None else right
        line = text.replace(CHECKSUM_SLOT, CHECKSUMS[checksum](value)).encode("utf-8")
        self.add(update.tail(line))
        voided = self.plain.books[(pair, market.channel_name)]
        if not voided.valid and seed % 4:  # as a recorder resubscribes: mostly at once
            self.snapshot(pair, seed % len(SNAPSHOT_PRICES) if seed % 2 else 0)

    def snapshot(self, pair: str, form: int = 0) -> None:
        """The market's window, its prices printed the ``form``-th of ``SNAPSHOT_PRICES`` way
        (the book's scale is then wider or narrower than the market's updates)."""
        text = self.markets[pair].snapshot_frame(1)
        if form:
            msg = orjson.loads(text)
            for side in msg[1].values():
                side[:] = [
                    [SNAPSHOT_PRICES[form](level[0]), *level[1:]] for level in side[: 1 + form % 3]
                ]
            text = orjson.dumps(msg).decode()
        self.add_text(text)

    def event(self, kind: int, seed: int) -> None:
        """Control frames, recorder events and junk: lines the general path handles."""
        rng = random.Random(seed)
        pair = rng.choice([*PAIRS, "DOT/USD"])
        if kind == 0:
            self.add_text(rng.choice(control_texts(rng, pair)))
        elif kind == 1:  # a checkpoint of the book the general path holds, else the market's
            wire = rng.choice(list(PAIRS))
            channel = f"book-{PAIRS[wire]}"
            book = self.plain.books.get((wire, channel))
            if book is not None and book.valid:
                asks, bids = book.top_asks(1000), book.top_bids(1000)
            else:
                asks, bids = self.markets[wire].window()
            if rng.random() < 0.2:
                bids = [*bids, rng.choice([["x"], [1, 2], "ab"])]  # malformed: voids the book
            meta = {"type": "checkpoint", "pair": wire, "channel": channel}
            self.add(meta_line(self.now, {**meta, "asks": asks, "bids": bids}).rstrip(b"\n"))
        elif kind == 2:
            meta = {"type": rng.choice(["connect", "disconnect", "session_start", "clock_step"])}
            self.add(meta_line(self.now, meta).rstrip(b"\n"))
        else:
            self.add(rng.choice(JUNK))


def run_scenario(
    steps: Sequence[tuple[Any, ...]], seed: int, chunks: Sequence[int], period: int | None
) -> tuple[Driven, Driven, Scenario]:
    """Build the lines of ``steps``, drive them through both, and hold both equal; also hold
    the Python loop to the general path alone (the reference the contract names)."""
    scenario = Scenario(seed)
    for step in steps:
        if step[0] == "update":
            scenario.update(*step[1:])
        elif step[0] == "snapshot":
            scenario.snapshot(*step[1:])
        else:
            scenario.event(*step[1:])
    native, python = drive_both(scenario.lines, ROUTES, chunks, period)
    alone = observe(scenario.plain, scenario.clock, final=True)
    difference = first_difference(python.states[-1], alone)
    assert difference is None, f"python loop vs general path alone: {difference}"
    return native, python, scenario


pairs_st = st.sampled_from(list(PAIRS))
update_st = st.tuples(
    st.just("update"),
    pairs_st,
    st.one_of(
        st.just(()),
        st.just(()),
        st.lists(st.sampled_from(list(MUTATIONS)), min_size=1, max_size=3).map(tuple),
    ),
    st.integers(0, 2**16),
    st.one_of(st.just(0), st.integers(0, len(CHECKSUMS) - 1)),
    st.sampled_from([0, 0, 0, 1, 2, 3]),
)
step_st = st.one_of(
    update_st,
    update_st,
    update_st,
    st.tuples(st.just("snapshot"), pairs_st, st.integers(0, 4)),
    st.tuples(st.just("event"), st.integers(0, 3), st.integers(0, 2**16)),
)


@pytest.mark.slow
@needs_core
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step_st, min_size=1, max_size=60),
    seed=st.integers(0, 3),
    chunks=st.lists(st.integers(1, 12), max_size=3),
    period=st.sampled_from([None, None, 3 * STEP_NS, 7 * STEP_NS]),
)
def test_mutated_lines_leave_the_same_state(
    steps: list[tuple[Any, ...]], seed: int, chunks: list[int], period: int | None
) -> None:
    """Valid updates and their mutations, snapshots, events and junk, in any order."""
    run_scenario(steps, seed, chunks, period)


@needs_core
@pytest.mark.parametrize("noise", [0, 3])
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_mutation_leaves_the_same_state(name: str, noise: int) -> None:
    """Every mutation on its own, with every way of writing ``c``, between plain updates of a
    valid book: hypothesis need not find each one to have it checked."""
    steps: list[tuple[Any, ...]] = []
    for seed in range(24):
        pair = list(PAIRS)[seed % len(PAIRS)]
        steps += [
            ("update", pair, (name,), seed, seed % len(CHECKSUMS), noise),
            ("update", pair, (), seed, 0, 0),
            ("update", pair, (name,), seed + 100, 0, noise),
            ("update", pair, (), seed, 0, 0),
            ("snapshot", pair, seed % 5),
        ]
    native, _, _ = run_scenario(steps, 0, (5,), None)
    assert native.handed_back


@needs_core
@pytest.mark.parametrize(
    "mutation",
    [f"{name}={index}" for name, (_, forms) in FORMS.items() for index in range(len(forms))],
)
def test_each_form_leaves_the_same_state(mutation: str) -> None:
    """Every price, volume and level form on its own, on levels of every book, with the
    checksum it really has (so the book stays valid across it, and the next plain updates meet
    what it left)."""
    steps: list[tuple[Any, ...]] = []
    for seed in range(12):
        pair = list(PAIRS)[seed % len(PAIRS)]
        steps += [
            ("update", pair, (mutation,), seed, 0, 0),
            ("update", pair, (), seed, 0, 0),
            ("update", pair, (), seed, 0, 0),
        ]
    run_scenario(steps, 0, (4,), None)


@needs_core
def test_clean_updates_after_a_padded_snapshot_stay_native() -> None:
    """A snapshot with two more decimals widens the scale; the market's own prices, two
    decimals short of it, are then padded by the core, not handed back."""
    steps: list[tuple[Any, ...]] = [("snapshot", "XBT/USD", 1)]
    steps += [("update", "XBT/USD", (), seed, 0, 0) for seed in range(300)]
    native, python, scenario = run_scenario(steps, 0, (), None)
    assert native.handed_back == python.handed_back == list(range(len(PAIRS) + 1))
    assert scenario.plain.stats["XBT/USD"].checksums_ok == 300


@needs_core
@pytest.mark.parametrize(
    ("asks", "bids", "price"),
    [
        ("27121.00000", "27119.00000", "27120"),  # scale 5, a price of 5 characters
        ("8.0", "6.0", "7"),  # scale 1, a price of 1 character
    ],
)
def test_a_price_without_a_dot_is_keyed_alike(asks: str, bids: str, price: str) -> None:
    """A price with no dot as long as the book's scale is a plain number of units.

    ``Book._new_key`` takes its fast path when ``price.find(".") == len(price) - 1 - scale``,
    which also holds with no dot at all when ``len(price) == scale`` (-1 == -1): ``"27120"`` at
    scale 5 is then keyed ``int("2712" + "27120")``, 2712.27120, below every real bid, where the
    core (and ``Book._key``) key it 27120.00000. With the checksum of the right book, the core
    keeps the book valid and the Python path voids it."""
    volume = "1.00000000"
    right = (
        [(asks, volume)],
        sorted([(bids, volume), (price, volume)], key=lambda level: -float(level[0])),
    )
    pieces = [checksum_piece(p) + checksum_piece(v) for side in right for p, v in side]
    checksum = zlib.crc32("".join(pieces).encode())
    snapshot = f'[1,{{"as":[["{asks}","{volume}"]],"bs":[["{bids}","{volume}"]]}},"book-10","X/Y"]'
    update = f'[1,{{"b":[["{price}","{volume}"]],"c":"{checksum}"}},"book-10","X/Y"]'
    lines = [record_line(1, 0, snapshot), record_line(2, 1, update)]
    native, python = (
        drive(lines, True, [("X/Y", "book-10")]),
        drive(lines, False, [("X/Y", "book-10")]),
    )
    for driven in (native, python):
        book = driven.feed.books[("X/Y", "book-10")]
        assert (book.valid, book.top_asks(10), book.top_bids(10)) == (True, *right)
    assert_same(native, python)


@needs_core
@pytest.mark.parametrize("checksum", ['""', '"x"', '"1.5"', "[1]", '{"c":1}'])
def test_a_checksum_int_refuses_leaves_the_same_caches(checksum: str) -> None:
    """An update whose ``c`` is there but not a number ``int`` takes: both paths count it
    malformed and void the book, and must leave it exactly alike, caches included.

    The Python loop evaluates ``book.checksum() == int(checksum)``: the checksum first, which
    refreshes the caches and clears the dirty flags, then ``int`` raises. ``on_message`` (where
    the core hands such a line) evaluates ``book.verify(int(checksum))``: ``int`` raises first and
    the caches stay stale. No reader can tell (the book is void until a snapshot, which marks
    every cache stale; ``checksum()`` is the same number), but the two paths differ."""
    market = Market("XBT/USD", 10, 1, clock=fixed_clock)
    snapshot = market.snapshot_frame(1)
    update = market.update_frame(1)
    odd = update[: update.index('"c":') + 4] + checksum + "}" + update[update.index(',"book-') :]
    lines = [record_line(1, 0, snapshot), record_line(2, 1, odd)]
    states = []
    for native in (True, False):
        driven = drive(lines, native, strict=True)
        states.append(driven.states[0])  # before the final checksum() refreshes every cache
        assert driven.feed.stats["XBT/USD"].malformed == 1
    difference = first_difference(states[0], states[1])
    assert difference is None, f"native vs python: {difference}"


@needs_core
def test_odd_levels_the_general_path_stored_enter_the_top_natively() -> None:
    """Levels only the general path takes (a non-ASCII digit for a volume, a price of 13
    decimals, one without a dot) wait below the top 10; plain deletes from the core then bring
    them into the checksum, whose pieces the core must build from them exactly as Python does,
    with its keys padded to the scale of 13 those deep prices set."""
    asks = [[f"{27121 + i}.00000", "1.00000000"] for i in range(10)]
    asks += [["27131.1", "\u0661"], ["100000", "2.5"], ["27133.0000000000001", "00.30"]]
    bids = [[f"{27119 - i}.00000", "1.00000000"] for i in range(10)]
    bids += [["27109.9", "\u0662.\u0660"], ["0.0000000000001", "7"]]
    snapshot = orjson.dumps([1, {"as": asks, "bs": bids}, "book-25", "X/Y"]).decode()
    feed = BookFeed()
    feed.on_message(orjson.loads(snapshot), 1)
    book = feed.books[("X/Y", "book-25")]
    assert book.scale == 13
    texts = [snapshot]
    for i in range(12):
        side, price = ("a", asks[i // 2][0]) if i % 2 else ("b", bids[i // 2][0])
        msg = [1, {side: [[price, "0.00000000", "1700000000.000000"]]}, "book-25", "X/Y"]
        checksum = right_checksum(book, msg)
        assert checksum is not None
        msg[1]["c"] = str(checksum)  # type: ignore[index]
        feed.on_message(msg, 2 + i)
        texts.append(orjson.dumps(msg).decode())
    assert book.valid
    assert ("27131.1", "\u0661") in book.top_asks(10)
    assert ("27109.9", "\u0662.\u0660") in book.top_bids(10)
    assert ("100000", "2.5") in book.top_asks(10)
    lines = [record_line(1 + i, i, text) for i, text in enumerate(texts)]
    native, python = drive_both(lines, [("X/Y", "book-25")], (1, 3), strict=True)
    assert native.handed_back == python.handed_back == [0]
    assert native.feed.stats["X/Y"].checksums_ok == 12


@needs_core
def test_checksums_over_texts_of_every_length_match_zlib() -> None:
    """The core takes a checksum's CRC 64 and 16 bytes a step by carry-less multiplication where
    the processor has it, and the rest by table: books whose top-10 text runs from a few dozen
    bytes to over a kilobyte stay valid natively, with the checksum ``zlib.crc32`` gives."""
    asks = [[f"{21 + i}.0", "1"] for i in range(10)]
    bids = [[f"{10 - i}.0", "1"] for i in range(10)]
    snapshot = orjson.dumps([1, {"as": asks, "bs": bids}, "book-10", "X/Y"]).decode()
    feed = BookFeed()
    feed.on_message(orjson.loads(snapshot), 1)
    book = feed.books[("X/Y", "book-10")]
    texts = [snapshot]
    lengths = set()
    for i in range(400):
        volume = "9" * (1 + (i * 37) % 400)
        side, price = ("a", asks[i % 10][0]) if i % 2 else ("b", bids[(i // 2) % 10][0])
        msg = [1, {side: [[price, volume, "1700000000.000000"]]}, "book-10", "X/Y"]
        checksum = right_checksum(book, msg)
        assert checksum is not None
        msg[1]["c"] = str(checksum)  # type: ignore[index]
        feed.on_message(msg, 2 + i)
        texts.append(orjson.dumps(msg).decode())
        lengths.add(len("".join(book.asks.top)))
    assert book.valid
    assert min(lengths) < 64 < 1000 < max(lengths)
    lines = [record_line(1 + i, i, text) for i, text in enumerate(texts)]
    native, python = drive_both(lines, [("X/Y", "book-10")], (1, 3), strict=True)
    assert native.handed_back == python.handed_back == [0]
    assert native.feed.stats["X/Y"].checksums_ok == 400


@needs_core
def test_a_level_someone_holds_is_replaced_not_changed() -> None:
    """The core gives a level its new text in place only when the side's dict alone holds its
    tuple; a tuple a reader holds (a row being built, ``top_asks``' list) keeps its text."""
    asks = [[f"{21 + i}.0", "1.5"] for i in range(10)]
    bids = [[f"{10 - i}.0", "1.5"] for i in range(10)]
    snapshot = orjson.dumps([1, {"as": asks, "bs": bids}, "book-10", "X/Y"]).decode()
    feed = BookFeed()
    feed.on_message(orjson.loads(snapshot), 1)
    book = feed.books[("X/Y", "book-10")]
    held = book.top_asks(1)
    reference = copy.deepcopy(book)  # where each update's checksum comes from
    lines = []
    for seq, side, level in ((1, "a", ["21.0", "2.5"]), (2, "b", ["10.0", "3.5"])):
        msg = [1, {side: [level]}, "book-10", "X/Y"]
        msg[1]["c"] = str(right_checksum(reference, msg))  # type: ignore[index]
        reference.apply_side(reference.asks if side == "a" else reference.bids, [level])
        lines.append(record_line(2 + seq, seq, orjson.dumps(msg).decode()))
    fast = LineFeed(feed, native=True)
    fast.follow("X/Y", "book-10")
    assert fast.run(lines, 0) == 2
    assert book.valid
    assert held == [("21.0", "1.5")]
    assert book.top_asks(1) == [("21.0", "2.5")]
    assert book.top_bids(1) == [("10.0", "3.5")]


# -- Kraken v2 lines ------------------------------------------------------------------------------

V2_PAIRS = {"BTC/USD": 10, "DOGE/USD": 25}
"""The followed v2 books (a v2 snapshot's depth is inferred from its size: 10, 25, ...)."""
V2_ROUTES: tuple[Key, ...] = tuple((pair, f"book-{depth}") for pair, depth in V2_PAIRS.items())


def v2_update_lines(markets: dict[str, V2Market], count: int, seed: int) -> list[bytes]:
    """Snapshots, then ``count`` updates of the markets with the faults of a real stream."""
    rng = random.Random(seed)
    texts = [market.snapshot_frame() for market in markets.values()]
    for _ in range(count):
        market = markets[rng.choice(list(markets))]
        roll = rng.random()
        if roll < 0.005:
            texts.append(market.update_frame(bad_checksum=True))
            texts.append(market.snapshot_frame())
        elif roll < 0.01:
            texts.append(market.snapshot_frame())
        elif roll < 0.02:
            texts.append('{"channel":"heartbeat"}')
        else:
            texts.append(market.update_frame())
    return [record_line(BASE_NS + i * STEP_NS, i, text) for i, text in enumerate(texts)]


@pytest.mark.slow
@needs_core
@pytest.mark.parametrize(("depth", "seed"), [(10, 1), (25, 2), (100, 3), (1000, 4)])
def test_simulated_v2_markets_leave_the_same_books(depth: int, seed: int) -> None:
    """The v2 market (``0E-8`` deletes, trailing zeros) at ``depth`` and BTC/USD at 10: the core
    applies every update the Python loop applies, and both leave the same state."""
    markets = {
        "DOGE/USD": V2Market("DOGE/USD", depth, seed, clock=fixed_clock),
        "BTC/USD": V2Market("BTC/USD", 10, seed, clock=fixed_clock),
    }
    lines = v2_update_lines(markets, 3000, seed)
    routes = [("DOGE/USD", f"book-{depth}"), ("BTC/USD", "book-10")]
    native, python = drive_both(lines, routes, [1, 250, 17, 600], 500 * STEP_NS, True, v2=True)
    assert native.handed_back == python.handed_back
    assert len(native.handed_back) < len(lines) // 10
    assert any(b"0E-8" in line for line in lines)
    for pair, market in markets.items():
        stats = native.feed.stats[pair]
        assert stats.checksums_ok > 2000 // len(markets)
        assert stats.malformed == 0
        book = native.feed.books[(pair, f"book-{market.depth}")]
        assert book.valid
        assert (book.top_asks(depth), book.top_bids(depth)) == market.window()


def v2_capture_lines(captures_dir: Path) -> list[bytes]:
    from test_v2 import capture_frames

    frames = capture_frames(captures_dir)
    return [record_line(BASE_NS + i * STEP_NS, i, text) for i, text in enumerate(frames)]


@needs_core
def test_real_v2_capture_verifies_natively(captures_dir: Path) -> None:
    """Kraken's real v2 capture: 510 of 510 checksums on both paths, every update applied by the
    core; printed as floats print it (trailing zeros lost) it fails on both, as it must."""
    lines = v2_capture_lines(captures_dir)
    native, python = drive_both(lines, [("BTC/USD", "book-10")], (7, 100), strict=True, v2=True)
    assert native.handed_back == python.handed_back == [0]
    stats = native.feed.stats["BTC/USD"]
    assert (stats.checksums_ok, stats.checksums_failed) == (510, 0)
    floats = [orjson.dumps({"recv_ns": 1 + i, "msg": orjson.loads(line)["msg"]}) for i, line in
              enumerate(lines)]  # fmt: skip
    native, python = drive_both(floats, [("BTC/USD", "book-10")], v2=True)
    assert native.feed.stats["BTC/USD"].checksums_failed >= 1


@needs_core
def test_official_v2_vector_verifies_natively() -> None:
    """Kraken's official v2 example (3310070434), then an update deleting its best bid with
    ``0E-8``: applied by the core, checksum verified."""
    from test_v2 import OFFICIAL_ASKS, OFFICIAL_BIDS, book_frame

    reference = Book(10)
    reference.apply_snapshot(OFFICIAL_ASKS, OFFICIAL_BIDS[1:])
    texts = [
        book_frame("snapshot", "BTC/USD", OFFICIAL_ASKS, OFFICIAL_BIDS, 3310070434),
        book_frame("update", "BTC/USD", [], [("45283.5", "0E-8")], reference.checksum()),
    ]
    lines = [record_line(1 + i, i, text) for i, text in enumerate(texts)]
    native, _ = drive_both(lines, [("BTC/USD", "book-10")], strict=True, v2=True)
    assert native.handed_back == [0]
    assert native.feed.stats["BTC/USD"].checksums_ok == 2
    assert native.feed.books[("BTC/USD", "book-10")].top_bids(1) == [("45283.4", "1.54582015")]


V2_QTYS = [
    "0E-8", "0e-8", "0E+2", "0.0E-8", "0.00000000", "0", "00", "1E-8", "1.5e3", "1.50000000E0",
    "5", "0.10000000", "0.1", "-0.0", "-1.0", "-0", "1.", ".5", "1" * 25, "0." + "0" * 30,
    "1." + "0" * 40, "1e400", "1e-400", "1E+99", "NaN", "Infinity", '"0.1"', '"0E-8"', "null",
    "true", "[1]", "{}", "0x1", "+1",
]  # fmt: skip
"""Quantity lexemes: zeros as decimals in every print, exponents, odd digits, not numbers."""
V2_PRICES: list[Callable[[str], str]] = [
    lambda p: p + "0", lambda p: p + "7", lambda p: p.split(".")[0], lambda p: p.split(".")[0] + ".",
    lambda p: "-" + p, lambda p: "0" + p, lambda p: "1" * 25, lambda p: "9" * 18,
    lambda p: "9" * 19 + ".5", lambda p: "0." + "0" * 17 + "1", lambda p: p + "0" * 20,
    lambda p: "2.94302E4", lambda p: p + "e0", lambda p: "1e-30", lambda p: "1e-99", lambda p: "0",
    lambda p: "0.0", lambda p: f'"{p}"', lambda p: "null", lambda p: "[" + p + "]",
    lambda p: "1e400",
]  # fmt: skip
"""Price lexemes made from a real one (``p``): the core must refuse or key each exactly."""
V2_CHECKSUMS: list[Callable[[int], str]] = [
    lambda c: f"{c}", lambda c: f"{c ^ 1}", lambda c: f'"{c}"', lambda c: f"{c}.0",
    lambda c: f"{c}e0", lambda c: f"-{c}", lambda c: f"{c + 2**32}", lambda c: f"{c + 2**64}",
    lambda c: f"{c:025d}"[:-25] + "1" * 25, lambda c: "null", lambda c: "true", lambda c: "-0",
    lambda c: "0", lambda c: f"[{c}]",
]  # fmt: skip
"""How ``checksum`` is written, given the checksum the update really has."""


def v2_levels(update: dict[str, Any]) -> list[Obj]:
    sides = [update[side] for side in ("asks", "bids") if isinstance(update[side], list)]
    return [level for side in sides for level in side if isinstance(level, Obj)]


def m2_qty(entry: dict[str, Any], rng: random.Random) -> None:
    levels = v2_levels(entry)
    if levels:
        level = rng.choice(levels)
        level[:] = [(k, Raw(rng.choice(V2_QTYS)) if k == "qty" else v) for k, v in level]


def m2_price(entry: dict[str, Any], rng: random.Random) -> None:
    levels = v2_levels(entry)
    if levels:
        level = rng.choice(levels)
        level[:] = [
            (k, Raw(rng.choice(V2_PRICES)(str(v))) if k == "price" else v) for k, v in level
        ]


def m2_new_level(entry: dict[str, Any], rng: random.Random) -> None:
    """A level near the top (in the checksum): a new price, an existing one, an odd one."""
    levels = v2_levels(entry) or [Obj([("price", Raw("27120.0")), ("qty", Raw("1.0"))])]
    price = str(dict(rng.choice(levels)).get("price", "27120.0"))
    new = rng.choice([price[:-1] + "3", price + "3", price, rng.choice(V2_PRICES)(price)])
    qty = rng.choice(["0.10000000", "2", "0E-8", "0.00000000", rng.choice(V2_QTYS)])
    side = entry[rng.choice(["asks", "bids"])]
    if isinstance(side, list):
        side.insert(rng.randint(0, len(side)), Obj([("price", Raw(new)), ("qty", Raw(qty))]))


def m2_level_shape(entry: dict[str, Any], rng: random.Random) -> None:
    """A level with keys missing, repeated, reordered, extra, or not an object."""
    levels = v2_levels(entry)
    if not levels:
        return
    level = rng.choice(levels)
    price, qty = dict(level).get("price", Raw("27120.0")), dict(level).get("qty", Raw("1.0"))
    level[:] = rng.choice(
        [
            [("price", price)],
            [("qty", qty)],
            [("qty", qty), ("price", price)],
            [("price", price), ("qty", Raw("9.0")), ("qty", qty)],
            [("price", Raw("1.0")), ("price", price), ("qty", qty)],
            [("price", price), ("qty", qty), ("r", True), ("x", [[{"y": Raw("1e99")}]])],
            [("Price", price), ("qty", qty)],
        ]
    )
    side = entry[rng.choice(["asks", "bids"])]
    if rng.random() < 0.2 and isinstance(side, list):
        side.insert(0, rng.choice([[str(price), str(qty)], None, 5, Obj()]))


def m2_entry(entry: dict[str, Any], rng: random.Random) -> None:
    """The entry's keys: a side repeated, missing, odd; the checksum missing or repeated; the
    symbol another, odd or escaped; extra keys."""
    choice = rng.randrange(8)
    key = rng.choice(["asks", "bids", "checksum", "symbol"])
    if choice == 0:
        entry["@extra"].append((key, rng.choice([[], None, CHECKSUM_SLOT, "BTC/USD"])))
    elif choice == 1:
        entry["@drop"].add(key)
    elif choice == 2:
        entry[rng.choice(["asks", "bids"])] = rng.choice([None, {}, "x", 7, [[]], [None]])
    elif choice == 3:
        entry["symbol"] = rng.choice(["ETH/USD", "BTC/USD ", "btc/usd", None, 5, ["BTC/USD"],
                                      Raw('"BTC\\/USD"'), Raw('"BTC\\u002fUSD"')])  # fmt: skip
    elif choice == 4:
        entry["@extra"].append(rng.choice([("x", {"y": [1, None]}), ("", []), ("\u00e9", 1),
                                           ("checksum ", 1), ("timestamp", "T")]))  # fmt: skip
    elif choice == 5:
        entry["@data"] = rng.choice(["two", "empty", "object", "null"])
    elif choice == 6:
        entry["@msg"].append(rng.choice([("type", "snapshot"), ("type", "Update"),
                                         ("channel", "ticker"), ("channel", "book "),
                                         ("x", [1, 2]), ("type", None)]))  # fmt: skip
    else:
        entry["@msg"].append(("@drop", rng.choice(["channel", "type", "data"])))


V2_MUTATIONS: dict[str, Callable[[dict[str, Any], random.Random], None]] = {
    "qty": m2_qty,
    "price": m2_price,
    "new_level": m2_new_level,
    "level_shape": m2_level_shape,
    "entry": m2_entry,
}
"""Changes to a valid v2 update, by name; ``recv_ns``, ``record``, ``bytes`` and ``flip`` are
v1's, applied to the record around it."""
V2_RECORD_MUTATIONS = ("recv_ns", "record", "bytes", "flip")


def as_obj(text: str) -> Any:
    """A v2 frame as ``dump`` prints it back exactly: objects as ``Obj``, numbers as ``Raw``."""
    return json.loads(text, parse_float=Raw, parse_int=Raw, object_pairs_hook=Obj)


class V2Scenario:
    """v2 lines from steps against ``V2_PAIRS``' markets; ``plain`` (a ``V2BookFeed``) follows
    them on the general path, so that a mutated update can carry the checksum it really has."""

    def __init__(self, seed: int) -> None:
        self.markets = {
            pair: V2Market(pair, depth, seed, clock=fixed_clock) for pair, depth in V2_PAIRS.items()
        }
        self.plain = V2BookFeed()
        self.clock = -(1 << 126)
        self.lines: list[Any] = []
        for market in self.markets.values():
            self.add_text(market.snapshot_frame())

    @property
    def now(self) -> int:
        return BASE_NS + len(self.lines) * STEP_NS

    def add(self, line: Any) -> None:
        self.lines.append(line)
        self.clock = general(self.plain, line, self.clock)

    def add_text(self, text: str) -> None:
        self.add(record_line(self.now, len(self.lines), text))

    def right_checksum(self, text: str) -> int | None:
        """The checksum of the book ``text`` (checksum ``0``) leaves, on a copy of ``plain``."""
        try:
            msg = decode_v2(text.replace(CHECKSUM_SLOT, "0")).get("msg")
        except (ValueError, AttributeError, RecursionError):
            return None
        feed = copy.deepcopy(self.plain)
        feed.last_key = None
        feed.on_message(msg, self.now)
        book = feed.books.get(feed.last_key) if feed.last_key else None
        return None if book is None else book.checksum()

    def update(
        self, pair: str, mutations: Sequence[str], seed: int, checksum: int, noise: int
    ) -> None:
        market = self.markets[pair]
        msg = as_obj(market.update_frame())
        entry_obj = dict(msg)["data"][0]
        entry: dict[str, Any] = dict(entry_obj)
        entry.update({"@extra": [], "@drop": set(), "@data": None, "@msg": []})
        entry["checksum"] = CHECKSUM_SLOT
        update = Update(self.now, len(self.lines), None, [], None, None)
        update.record = Obj([("seq", update.seq)])
        rng = random.Random(seed)
        for name in mutations:
            if name in V2_RECORD_MUTATIONS:
                MUTATIONS[name](update, rng)
            else:
                V2_MUTATIONS[name](entry, rng)
        pairs = [(k, v) for k, v in entry.items() if not k.startswith("@")]
        pairs = [(k, v) for k, v in pairs if k not in entry["@drop"]] + entry["@extra"]
        data: Any = [Obj(pairs)]
        if entry["@data"] == "two":
            data = [Obj(pairs), Obj(pairs)]
        elif entry["@data"] is not None:
            data = {"empty": [], "object": Obj(pairs), "null": None}[entry["@data"]]
        frame = Obj([(k, data if k == "data" else v) for k, v in msg])
        for key, value in entry["@msg"]:
            if key == "@drop":
                frame[:] = [(k, v) for k, v in frame if k != value]
            else:
                frame.append((key, value))
        record = Obj([("recv_ns", update.recv_ns), *update.record, ("msg", frame)])
        if update.recv_ns is None:
            record = Obj(pair for pair in record if pair[0] != "recv_ns")
        style = Style(rng, space=0.3 if noise & 1 else 0.0, escape=0.2 if noise & 2 else 0.0)
        text = style.gap() + dump(record, style) + style.gap()
        right = self.right_checksum(text)
        value = market.checksum() if right is None else right
        line = text.replace(CHECKSUM_SLOT, V2_CHECKSUMS[checksum](value)).encode("utf-8")
        self.add(update.tail(line))
        book = self.plain.books.get((pair, market.channel_name))
        if (book is None or not book.valid) and seed % 4:  # resubscribed: mostly at once
            self.snapshot(pair, seed % 3)

    def snapshot(self, pair: str, form: int = 0) -> None:
        """The market's window; ``form`` 1: a few levels only (filed under depth 10, which for
        DOGE/USD is another book than the followed one); 2: after a subscribe answer."""
        text = self.markets[pair].snapshot_frame()
        if form == 1:
            msg = as_obj(text)
            entry = dict(msg)["data"][0]
            sides = {key: value[:3] for key, value in entry if key in ("asks", "bids")}
            book = Book(10)
            book.apply_snapshot(
                *([(str(lv[0][1]), str(lv[1][1])) for lv in sides[key]] for key in ("asks", "bids"))
            )
            entry[:] = [
                (key, sides.get(key, Raw(str(book.checksum())) if key == "checksum" else value))
                for key, value in entry
            ]
            text = dump(msg, Style(random.Random(0)))
        elif form == 2:
            depth = V2_PAIRS[pair]
            self.add_text(
                f'{{"method":"subscribe","result":{{"channel":"book","depth":{depth},'
                f'"symbol":"{pair}"}},"success":true}}'
            )
        self.add_text(text)

    def event(self, kind: int, seed: int) -> None:
        rng = random.Random(seed)
        pair = rng.choice(list(V2_PAIRS))
        if kind == 0:
            self.add_text(
                rng.choice(
                    [
                        '{"channel":"heartbeat"}',
                        f'{{"channel":"status","type":"update","data":[{{"system":"online",'
                        f'"connection_id":{rng.randrange(3)}}}]}}',
                        f'{{"channel":"ticker","type":"update","data":[{{"symbol":"{pair}"}}]}}',
                        f'[1,{{"a":[],"c":"0"}},"book-10","{pair}"]',
                    ]
                )
            )
        elif kind == 1:
            book = self.plain.books.get((pair, f"book-{V2_PAIRS[pair]}"))
            if book is not None and book.valid:
                asks, bids = book.top_asks(1000), book.top_bids(1000)
            else:
                asks, bids = self.markets[pair].window()
            meta = {"type": "checkpoint", "pair": pair, "channel": f"book-{V2_PAIRS[pair]}"}
            self.add(meta_line(self.now, {**meta, "asks": asks, "bids": bids}).rstrip(b"\n"))
        elif kind == 2:
            self.add(meta_line(self.now, {"type": rng.choice(["connect", "disconnect"])}).rstrip())
        else:
            self.add(rng.choice(JUNK + [b"[" * 100_000, b'{"recv_ns":1,"msg":' + b"[" * 5000]))


def run_v2_scenario(
    steps: Sequence[tuple[Any, ...]], seed: int, chunks: Sequence[int], period: int | None
) -> tuple[Driven, Driven, V2Scenario]:
    """As ``run_scenario``, for v2 lines."""
    scenario = V2Scenario(seed)
    for step in steps:
        getattr(scenario, step[0])(*step[1:])
    native, python = drive_both(scenario.lines, V2_ROUTES, chunks, period, v2=True)
    alone = observe(scenario.plain, scenario.clock, final=True)
    difference = first_difference(python.states[-1], alone)
    assert difference is None, f"python loop vs general path alone: {difference}"
    return native, python, scenario


v2_pairs_st = st.sampled_from(list(V2_PAIRS))
v2_update_st = st.tuples(
    st.just("update"),
    v2_pairs_st,
    st.one_of(
        st.just(()),
        st.lists(
            st.sampled_from([*V2_MUTATIONS, *V2_RECORD_MUTATIONS]), min_size=1, max_size=3
        ).map(tuple),
    ),
    st.integers(0, 2**16),
    st.one_of(st.just(0), st.integers(0, len(V2_CHECKSUMS) - 1)),
    st.sampled_from([0, 0, 0, 1, 2, 3]),
)
v2_step_st = st.one_of(
    v2_update_st,
    v2_update_st,
    v2_update_st,
    st.tuples(st.just("snapshot"), v2_pairs_st, st.integers(0, 2)),
    st.tuples(st.just("event"), st.integers(0, 3), st.integers(0, 2**16)),
)


@pytest.mark.slow
@needs_core
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(v2_step_st, min_size=1, max_size=50),
    seed=st.integers(0, 3),
    chunks=st.lists(st.integers(1, 12), max_size=3),
    period=st.sampled_from([None, None, 3 * STEP_NS, 7 * STEP_NS]),
)
def test_mutated_v2_lines_leave_the_same_state(
    steps: list[tuple[Any, ...]], seed: int, chunks: list[int], period: int | None
) -> None:
    """Valid v2 updates and their mutations (lexemes, shapes, keys, bytes), snapshots of the
    followed and of another depth, events and junk, in any order."""
    run_v2_scenario(steps, seed, chunks, period)


@needs_core
@pytest.mark.parametrize("noise", [0, 3])
@pytest.mark.parametrize("name", [*V2_MUTATIONS, *V2_RECORD_MUTATIONS])
def test_each_v2_mutation_leaves_the_same_state(name: str, noise: int) -> None:
    """Every v2 mutation on its own, with every way of writing the checksum, between plain
    updates of a valid book."""
    steps: list[tuple[Any, ...]] = []
    for seed in range(30):
        pair = list(V2_PAIRS)[seed % len(V2_PAIRS)]
        steps += [
            ("update", pair, (name,), seed, seed % len(V2_CHECKSUMS), noise),
            ("update", pair, (), seed, 0, 0),
            ("update", pair, (name,), seed + 100, 0, noise),
            ("update", pair, (), seed, 0, 0),
            ("snapshot", pair, seed % 3),
        ]
    native, _, _ = run_v2_scenario(steps, 0, (5,), None)
    assert native.handed_back


@needs_core
@pytest.mark.parametrize("index", range(len(V2_QTYS)))
def test_each_v2_quantity_leaves_the_same_state(index: int) -> None:
    """Every quantity lexeme on a level of every book, with the checksum it really has."""
    steps: list[tuple[Any, ...]] = []
    for seed in range(10):
        pair = list(V2_PAIRS)[seed % len(V2_PAIRS)]
        steps += [("update", pair, ("new_level",), seed * 7 + index, 0, 0)]
        steps += [("update", pair, (), seed, 0, 0), ("update", pair, (), seed, 0, 0)]
    run_v2_scenario(steps, index % 4, (4,), None)


@needs_core
def test_clean_v2_updates_stay_native() -> None:
    """Plain v2 updates of both markets, subscribe answers and heartbeats between them: the
    core hands back only the snapshots and control frames."""
    steps: list[tuple[Any, ...]] = [("snapshot", "DOGE/USD", 2)]
    steps += [("update", list(V2_PAIRS)[seed % 2], (), seed, 0, 0) for seed in range(300)]
    native, python, scenario = run_v2_scenario(steps, 0, (), None)
    expected = [index for index, line in enumerate(scenario.lines) if b'"update"' not in line]
    assert native.handed_back == python.handed_back == expected
    updates = [line for line in scenario.lines if b'"update"' in line]
    assert all(_native.one_pass(line, True) for line in updates)


@needs_core
def test_recorder_lines_are_read_in_one_pass(captures_dir: Path) -> None:
    """Book updates as the recorder keeps them (simulated, ``0E-8`` deletes, and the real v2
    capture) take the one-pass reader of their API; any other layout is left to the general
    parser."""
    v1 = Market("XBT/USD", 10, 1, clock=fixed_clock)
    v1_lines = [record_line(BASE_NS, 7, v1.update_frame(336)) for _ in range(50)]
    assert all(_native.one_pass(line, False) for line in v1_lines)
    assert not any(_native.one_pass(line, True) for line in v1_lines)
    v2 = V2Market("BTC/USD", 10, 1, clock=fixed_clock)
    v2_lines = [record_line(BASE_NS, 7, v2.update_frame()) for _ in range(200)]
    assert any(b"0E-8" in line for line in v2_lines)
    assert all(_native.one_pass(line, True) for line in v2_lines)
    assert not any(_native.one_pass(line, False) for line in v2_lines)
    capture = v2_capture_lines(captures_dir)
    assert all(_native.one_pass(line, True) for line in capture[1:])
    line = v2_lines[0]
    others = [
        record_line(BASE_NS, 7, v2.snapshot_frame()),
        record_line(BASE_NS, 7, '{"channel":"heartbeat"}'),
        line.replace(b',"qty":', b', "qty":'),
        line.replace(b'"seq":7,', b""),
        line.replace(b'{"price":', b'{"qty":1,"price":', 1),
        line.replace(b'"bids"', b'"bids2"'),
        line + b" ",
    ]
    assert not any(_native.one_pass(other, True) for other in others)
    no_time = line[: line.index(b',"timestamp"')] + b"}]}}"
    assert _native.one_pass(no_time, True)


V2_FLIP_BYTES = b'",]}'
"""What replaces each byte of a v2 recorder line in the quick byte-flip test (``FLIP_BYTES`` in
the slow one): structure (a space and a digit are inserted before each byte)."""


def byte_flips(line: bytes, at: int, replacements: bytes) -> list[bytes]:
    """``line`` with its byte ``at`` replaced by each of ``replacements``, deleted, or preceded
    by a space or a digit."""
    flipped = [line[:at] + bytes([byte]) + line[at + 1 :] for byte in replacements]
    flipped.append(line[:at] + line[at + 1 :])
    flipped += [line[:at] + extra + line[at:] for extra in (b" ", b"0")]
    return [each for each in flipped if each != line]


def check_byte_flips(replacements: bytes) -> None:
    """A v2 update as the recorder keeps it (the one-pass reader's layout), every one-byte change
    of it after the snapshot it follows: the core and the Python loop leave the same state. One
    drive per place, so that flips of the symbol do not pile up pairs to compare."""
    market = V2Market("BTC/USD", 10, 5, clock=fixed_clock)
    for _ in range(1000):  # an update that deletes with 0E-8 and changes both sides
        snapshot = record_line(BASE_NS, 0, market.snapshot_frame())
        line = record_line(BASE_NS + STEP_NS, 1, market.update_frame())
        if b"0E-8" in line and b'"bids":[]' not in line and b'"asks":[]' not in line:
            break
    assert b"0E-8" in line
    assert _native.one_pass(line, True)
    ok = failed = 0
    for at in range(len(line)):
        lines = [snapshot, line]
        for flipped in byte_flips(line, at, replacements):
            lines += [snapshot, flipped]
        native, _ = drive_both(lines, [("BTC/USD", "book-10")], (2,), v2=True)
        stats = native.feed.stats["BTC/USD"]
        ok += stats.checksums_ok
        failed += stats.checksums_failed
    assert ok > len(line) * 2
    assert failed > 0


@needs_core
def test_every_byte_flip_of_a_v2_recorder_line_reads_alike() -> None:
    check_byte_flips(V2_FLIP_BYTES)


@pytest.mark.slow
@needs_core
def test_every_byte_flip_of_a_v2_recorder_line_reads_alike_over_all_flip_bytes() -> None:
    check_byte_flips(FLIP_BYTES)


@needs_core
def test_a_second_valid_book_of_the_symbol_hands_its_lines_back() -> None:
    """A DOGE/USD snapshot of 3 levels is filed under book-10 next to the followed book-25: v2
    updates name no depth, so the core must not apply them to the followed book."""
    steps: list[tuple[Any, ...]] = [("snapshot", "DOGE/USD", 1)]
    steps += [("update", "DOGE/USD", (), seed, 0, 0) for seed in range(20)]
    native, python, scenario = run_v2_scenario(steps, 0, (), None)
    assert scenario.plain.books[("DOGE/USD", "book-10")].valid
    assert native.handed_back == python.handed_back == list(range(len(scenario.lines)))


# -- the start index ------------------------------------------------------------------------------


@needs_core
@pytest.mark.parametrize("start", [0, 2, 3, 10])
def test_run_starts_where_it_is_told(start: int) -> None:
    """``run(lines, start)`` is the same call on both paths for any ``start``: same return,
    same books."""
    market = Market("XBT/USD", 10, 1, clock=fixed_clock)
    snapshot = orjson.loads(market.snapshot_frame(1))
    lines = [record_line(10 + i, i, market.update_frame(1)) for i in range(3)]
    outcome = []
    for native in (True, False):
        feed = BookFeed()
        feed.on_message(snapshot, 1)
        line_feed = LineFeed(feed, native=native)
        line_feed.follow("XBT/USD", "book-10")
        index = line_feed.run(lines, start)
        outcome.append((index, observe(feed, line_feed.clock, final=True)))
    assert outcome[0][0] == outcome[1][0], "run returned different indices"
    difference = first_difference(outcome[0][1], outcome[1][1])
    assert difference is None, f"native vs python: {difference}"


@needs_core
@pytest.mark.parametrize("native", [True, False])
def test_a_negative_start_is_refused(native: bool) -> None:
    """``lines[start:]`` with a negative start would apply the last lines first: refused."""
    line_feed = LineFeed(BookFeed(), native=native)
    with pytest.raises(ValueError, match="start must not be negative"):
        line_feed.run([b""], -1)


# -- the interface and the build ------------------------------------------------------------------


def test_every_attribute_of_the_native_interface_exists() -> None:
    """The core reaches kbook's objects by attribute name (``kbook.lines.NATIVE_INTERFACE``): a
    rename of any of them must fail here, not make the core fail at its first line."""
    feed = BookFeed()
    line_feed = LineFeed(feed, native=False)
    route = line_feed.follow("XBT/USD", "book-10")
    book = Book(10)
    instances = {
        "LineFeed": line_feed,
        "Route": route,
        "BookFeed": feed,
        "Book": book,
        "_Side": book.asks,
        "PairStats": route.stats,
    }
    assert set(NATIVE_INTERFACE) == set(instances)
    missing = [
        f"{owner}.{name}"
        for owner, names in NATIVE_INTERFACE.items()
        for name in names
        if not hasattr(instances[owner], name)
    ]
    assert not missing, f"the native core uses attributes that are gone: {missing}"
    assert callable(route.stats.become_invalid)


@needs_core
def test_the_core_declares_the_documented_interface() -> None:
    """The core's own table of names is ``NATIVE_INTERFACE``, class by class and in order."""
    assert _native is not None
    assert _native.interface() == NATIVE_INTERFACE
    assert native_core() is not None or os.environ.get("KBOOK_NATIVE") == "0"


def test_native_core_is_built() -> None:
    """Where a C compiler is there, installing kbook builds the core. ``setup.py`` makes it
    optional so that a missing compiler is no error, which also means a broken build would pass
    unseen and leave replay four times slower."""
    if os.environ.get("KBOOK_NATIVE") == "0":
        pytest.skip("KBOOK_NATIVE=0 turns the native core off")
    compiler = (sysconfig.get_config_var("CC") or "").split()
    if not compiler or shutil.which(compiler[0]) is None:
        pytest.skip("no C compiler here: the pure-Python loop is the one that runs")
    assert native_core() is not None, "a C compiler is here but kbook._native was not built"


@needs_core
def test_a_book_of_no_kraken_depth_is_refused_not_applied() -> None:
    """``Book`` refuses depths Kraken does not serve; a book made to hold one all the same is
    refused by the core too (it never truncates a side into the checksum's levels), the line
    left unapplied."""
    market = Market("XBT/USD", 10, 1, clock=fixed_clock)
    feed = BookFeed()
    feed.on_message(orjson.loads(market.snapshot_frame(7)), 1)
    book = feed.books[("XBT/USD", "book-10")]
    book.depth = 3
    lines = LineFeed(feed, native=True)
    lines.follow("XBT/USD", "book-10")
    with pytest.raises(ValueError, match="native core: a book of depth 3"):
        lines.run([record_line(2, 1, market.update_frame(7))], 0)
    assert (lines.clock, feed.stats["XBT/USD"].updates) == (-NEVER, 0)
