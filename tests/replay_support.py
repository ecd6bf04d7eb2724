"""Helpers for the replay tests: a tiny synthetic Kraken v1 market and an independent reference book.

The reference is deliberately naive (dicts, ``sorted()``, ``Decimal``) and shares no code with
``kbook.book``, so that replay rows are checked against a second implementation of Kraken's rules.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from kbook.book import Book
from kbook.segment import frame_line, meta_line, write_segment
from kbook.v2 import RecordReader, feed_for


def _piece(text: str) -> str:
    return text.replace(".", "").lstrip("0")


class SynthMarket:
    """A random walk of one v1 book, emitting snapshot and update frames with correct checksums."""

    def __init__(self, pair: str = "XBT/USD", depth: int = 10, seed: int = 0) -> None:
        self.pair = pair
        self.depth = depth
        self.channel = f"book-{depth}"
        self.rng = random.Random(seed)
        mid = 5_000_000  # ticks of 0.01
        self.asks: dict[int, str] = {mid + i: self._volume() for i in range(1, depth + 1)}
        self.bids: dict[int, str] = {mid - i: self._volume() for i in range(depth)}

    def _volume(self) -> str:
        return f"{self.rng.randint(1, 10**9) / 10**8:.8f}"

    @staticmethod
    def _price(tick: int) -> str:
        return f"{tick // 100}.{tick % 100:02d}000"

    def _level(self, tick: int, volume: str) -> list[str]:
        return [self._price(tick), volume, "1700000000.000000"]

    def snapshot(self, channel_id: int = 42) -> str:
        asks = [self._level(t, v) for t, v in sorted(self.asks.items())]
        bids = [self._level(t, v) for t, v in sorted(self.bids.items(), reverse=True)]
        return orjson.dumps(
            [channel_id, {"as": asks, "bs": bids}, self.channel, self.pair]
        ).decode()

    def update(self, channel_id: int = 42) -> str:
        changes: dict[str, list[list[str]]] = {}
        for _ in range(self.rng.choice((1, 1, 2))):
            is_bid = self.rng.random() < 0.5
            side = self.bids if is_bid else self.asks
            best = max(self.bids) if is_bid else min(self.asks)
            other_best = min(self.asks) if is_bid else max(self.bids)
            roll = self.rng.random()
            if roll < 0.2 and len(side) > 2:
                tick = self.rng.choice(sorted(side))
                volume = "0.00000000"
                del side[tick]
            else:
                offset = self.rng.randint(-2, self.depth)
                tick = best - offset if is_bid else best + offset
                if (is_bid and tick >= other_best) or (not is_bid and tick <= other_best):
                    tick = best
                volume = self._volume()
                side[tick] = volume
            changes.setdefault("b" if is_bid else "a", []).append(self._level(tick, volume))
        self._truncate()
        payload: dict[str, Any] = {}
        if "a" in changes:
            payload["a"] = changes["a"]
        if "b" in changes:
            payload["b"] = changes["b"]
        payload["c"] = str(self.checksum())
        return orjson.dumps([channel_id, payload, self.channel, self.pair]).decode()

    def _truncate(self) -> None:
        for side, reverse in ((self.asks, False), (self.bids, True)):
            for tick in sorted(side, reverse=reverse)[self.depth :]:
                del side[tick]

    def checksum(self) -> int:
        asks = sorted(self.asks.items())[:10]
        bids = sorted(self.bids.items(), reverse=True)[:10]
        text = "".join(_piece(self._price(t)) + _piece(v) for t, v in asks + bids)
        return zlib.crc32(text.encode())

    def frames(self, count: int, start_ns: int, step_ns: int) -> Iterator[tuple[int, str]]:
        """A snapshot then ``count - 1`` updates, ``step_ns`` apart."""
        yield start_ns, self.snapshot()
        for i in range(1, count):
            yield start_ns + i * step_ns, self.update()


def write_frames(path: Path, frames: list[tuple[int, str]] | Iterator[tuple[int, str]]) -> Path:
    """A bare segment (``msg`` lines only) of ``(recv_ns, frame text)``."""
    return write_segment(
        path, (frame_line(ns, seq, text, True) for seq, (ns, text) in enumerate(frames))
    )


def write_records(path: Path, records: list[tuple[int, str | dict[str, Any]]]) -> Path:
    """A segment of frames (text) and recorder meta events (dicts)."""
    lines = []
    for seq, (ns, item) in enumerate(records):
        if isinstance(item, dict):
            lines.append(meta_line(ns, item))
        else:
            lines.append(frame_line(ns, seq, item, True))
    return write_segment(path, lines)


# -- the independent reference -------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every line of a segment, decoded with the standard library (not kbook's reader)."""
    import io
    import json

    import zstandard

    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        text = io.TextIOWrapper(reader, encoding="utf-8").read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class RefBook:
    """Kraken's v1 rules the slow, obvious way: Decimal keys in dicts, sorted on every read."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.bids: dict[Decimal, tuple[str, str]] = {}

    def set(self, side: dict[Decimal, tuple[str, str]], level: list[str]) -> None:
        price, volume = level[0], level[1]
        if Decimal(volume) == 0:
            side.pop(Decimal(price), None)
        else:
            side[Decimal(price)] = (price, volume)

    def sorted_asks(self) -> list[tuple[str, str]]:
        return [self.asks[k] for k in sorted(self.asks)]

    def sorted_bids(self) -> list[tuple[str, str]]:
        return [self.bids[k] for k in sorted(self.bids, reverse=True)]

    def truncate(self) -> None:
        for side, ordered in ((self.asks, sorted(self.asks)), (self.bids, sorted(self.bids))):
            keep = ordered[: self.depth] if side is self.asks else ordered[-self.depth :]
            for key in set(side) - set(keep):
                del side[key]

    def checksum(self) -> int:
        levels = self.sorted_asks()[:10] + self.sorted_bids()[:10]
        return zlib.crc32("".join(_piece(p) + _piece(v) for p, v in levels).encode())


def reference_states(
    records: list[dict[str, Any]], pair: str, channel: str, levels: int
) -> list[tuple[int, bool, list[tuple[str, str]], list[tuple[str, str]]]]:
    """``(clock, valid, bids, asks)`` after every event that touches the book of ``pair``.

    ``pair`` is the wire name; bids and asks are the best ``levels`` as received strings.
    """
    book: RefBook | None = None
    valid = False
    connection = None
    clock = -1
    states = []
    depth = int(channel.split("-")[1])
    for record in records:
        clock = max(clock, record["recv_ns"])
        touched = False
        meta, msg = record.get("meta"), record.get("msg")
        if meta is not None:
            if meta["type"] == "checkpoint" and (meta["pair"], meta["channel"]) == (pair, channel):
                book = RefBook(depth)
                for level in meta["asks"]:
                    book.set(book.asks, level)
                for level in meta["bids"]:
                    book.set(book.bids, level)
                valid = touched = True
            elif meta["type"] in ("connect", "disconnect"):
                touched, valid = valid, False
                connection = None
        elif isinstance(msg, dict):
            if msg.get("event") == "systemStatus" and msg.get("connectionID") != connection:
                # A new connection voids the book, as BookFeed does once it has seen any book.
                if connection is not None or book is not None:
                    touched, valid = valid, False
                connection = msg.get("connectionID")
        elif isinstance(msg, list) and msg[-2:] == [channel, pair]:
            payloads = msg[1:-2]
            if "as" in payloads[0] or "bs" in payloads[0]:
                book = RefBook(depth)
                for level in payloads[0].get("as", []):
                    book.set(book.asks, level)
                for level in payloads[0].get("bs", []):
                    book.set(book.bids, level)
                book.truncate()
                valid = True
            elif book is not None and valid:
                for payload in payloads:
                    for level in payload.get("a", []):
                        book.set(book.asks, level)
                    for level in payload.get("b", []):
                        book.set(book.bids, level)
                book.truncate()
                valid = book.checksum() == int(payloads[-1]["c"])
            touched = book is not None
        if touched and book is not None:
            bids = book.sorted_bids()[:levels] if valid else []
            asks = book.sorted_asks()[:levels] if valid else []
            states.append((clock, valid, bids, asks))
    return states


def reference_rows(
    records: list[dict[str, Any]], pair: str, channel: str, every: int, levels: int
) -> list[tuple[int, bool, list[tuple[str, str]], list[tuple[str, str]]]]:
    """``(t, valid, bids, asks)`` for every grid time from the first snapshot to the last event."""
    from bisect import bisect_right

    states = reference_states(records, pair, channel, levels)
    clocks = [state[0] for state in states]
    first = -(-clocks[0] // every) * every
    last = clocks[-1] // every * every
    rows = []
    for t in range(first, last + 1, every):
        _clock, valid, bids, asks = states[bisect_right(clocks, t) - 1]
        rows.append((t, valid, bids, asks))
    return rows


def assert_rows_match(table: Any, expected: list[Any], levels: int) -> None:
    """Every row of ``table`` (one pair) equals the reference, level by level."""
    data = table.to_pydict()
    assert [ts.value for ts in table.column("ts")] == [row[0] for row in expected]
    for index, (_t, valid, bids, asks) in enumerate(expected):
        assert data["valid"][index] is valid, index
        for i in range(levels):
            for side, ref in (("bid", bids), ("ask", asks)):
                px, sz = data[f"{side}_px_{i}"][index], data[f"{side}_sz_{i}"][index]
                if i < len(ref):
                    assert (px, sz) == (float(ref[i][0]), float(ref[i][1])), (index, side, i)
                else:
                    assert (px, sz) == (None, None), (index, side, i)


def cheap_frames(count: int, start_ns: int, step_ns: int, seed: int = 0) -> Iterator[bytes]:
    """Segment lines of a snapshot then ``count - 1`` valid updates, fast enough for big inputs.

    Each update sets the best bid's volume to one of 64 values whose checksums are computed once,
    so millions of frames cost string formatting only.
    """
    rng = random.Random(seed)
    book = RefBook(10)
    for i in range(10):
        book.set(book.asks, [f"{50001 + i}.00000", f"{1 + i}.00000000"])
        book.set(book.bids, [f"{50000 - i}.00000", f"{1 + i}.00000000"])
    asks = [[p, v, "1700000000.000000"] for p, v in book.sorted_asks()]
    bids = [[p, v, "1700000000.000000"] for p, v in book.sorted_bids()]
    snapshot = orjson.dumps([42, {"as": asks, "bs": bids}, "book-10", "XBT/USD"]).decode()
    yield frame_line(start_ns, 0, snapshot, True)
    variants = []
    for _ in range(64):
        volume = f"{rng.randint(1, 10**9) / 10**8:.8f}"
        book.set(book.bids, ["50000.00000", volume])
        variants.append((volume, book.checksum()))
    for seq in range(1, count):
        volume, checksum = variants[rng.randrange(64)]
        ts = f"{1_700_000_000 + seq // 1000}.{seq % 1000:06d}"
        text = (
            f'[42,{{"b":[["50000.00000","{volume}","{ts}"]],"c":"{checksum}"}},"book-10","XBT/USD"]'
        )
        yield frame_line(start_ns + seq * step_ns, seq, text, True)


def books_after_each_line(segment: Path, api: str) -> Iterator[tuple[int, Any, Book]]:
    """A plain ``BookFeed`` fed a segment line by line: ``(clock, key, book)`` for every book
    each line touched (every book, for a line that names none), the reference the event
    outputs are held to."""
    feed = feed_for(api)
    reader = RecordReader(segment, api)
    clock = -1
    for number, lines in reader.batches():
        for index, line in enumerate(lines):
            record = reader.decode(number + index, line) if line else None
            if record is None:
                continue
            clock = max(clock, record["recv_ns"])
            feed.last_key = None
            if "msg" in record:
                feed.on_message(record["msg"], clock)
            elif "meta" in record:
                feed.on_meta(record["meta"], clock)
            for key in [feed.last_key] if feed.last_key is not None else list(feed.books):
                yield clock, key, feed.books[key]
