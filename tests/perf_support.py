"""Recordings for the performance tests: recorder-style segments with every kind of trouble.

``write_recording`` lays out streams of segments the way the recorder does (rotation on the receive
clock, each rotated segment opening with ``checkpoint`` lines of the books that are valid, control
frames copied into every stream), from the simulator's seeded ``Market``: one stream per pair, or
with ``shared`` one stream holding every pair (as a capture of a whole connection does). With
``faults`` it sprinkles in what replay must survive: wrong checksums, reconnections with a new
connection id, resubscriptions, malformed frames, lines that are not JSON, ``raw`` lines, other
channels, a shallower book of the same pair, heartbeats, and a wall clock that steps back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from kbook.api import Api
from kbook.feed import BookFeed
from kbook.pairs import file_name
from kbook.segment import SegmentWriter, checkpoint_meta, frame_line, meta_line
from kbook.sim import Market, V2Market
from kbook.units import SECOND
from kbook.v2 import V2BookFeed
from kbook.v2 import decode as decode_v2

START_NS = 1_767_225_600 * SECOND - 90 * SECOND
"""90 s before 2026-01-01T00:00:00Z, so recordings cross a UTC day."""


@dataclass
class _Pair:
    """One pair's markets and whether the client's book of it is valid."""

    pair: str
    market: Market
    shallow: Market
    valid: bool = False

    def checkpoint(self, now: int) -> bytes:
        asks, bids = self.market.window()
        record = checkpoint_meta(
            self.pair, self.market.channel_name, asks, bids, self.market.checksum()
        )
        return meta_line(now, record)


@dataclass
class _Stream:
    """One stream of segments and the pairs written to it."""

    folder: Path
    name: str
    pairs: list[_Pair]
    writer: SegmentWriter | None = None
    boundary: int = 0
    names: set[str] = field(default_factory=set)

    def open(self, now: int, start: int, rotate: int) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start // SECOND))
        name = f"{self.name}.{stamp}"
        while name in self.names:
            name += "-1"
        self.names.add(name)
        self.writer = SegmentWriter(self.folder / f"{name}.jsonl.zst")
        self.boundary = (now // rotate + 1) * rotate
        for pair in self.pairs:
            if pair.valid:
                self.writer.write(pair.checkpoint(now))

    def close(self, now: int) -> None:
        assert self.writer is not None
        self.writer.write(meta_line(now, {"type": "segment_end", "reason": "rotate"}))
        self.writer.close()
        self.writer = None


def write_recording(
    root: Path,
    pairs: tuple[str, ...] = ("XBT/USD",),
    frames: int = 3_000,
    *,
    seed: int = 1,
    depth: int = 25,
    gap_ns: int = 20_000_000,
    rotate_ns: int = 10 * SECOND,
    faults: bool = True,
    shared: bool = False,
    api: Api = Api.V1,
) -> Path:
    """Write a recording under ``root`` (a folder per stream) and return ``root``.

    With ``api`` v2 the frames are Kraken v2 ones (``pairs`` then v2 symbols such as
    ``BTC/USD``), with the same faults in v2's words; v2 has no second depth of a pair."""
    rng = random.Random(seed)
    now = START_NS
    clock = [now / SECOND]
    v2 = api == Api.V2
    kind = V2Market if v2 else Market
    books = [
        _Pair(
            pair,
            kind(pair, depth, seed, clock=lambda: clock[0]),
            kind(pair, 10, seed, stream=1, clock=lambda: clock[0]),
        )
        for pair in pairs
    ]
    if shared:
        streams = [_Stream(root / "ALL", "ALL", books)]
    else:
        streams = [_Stream(root / file_name(p.pair), file_name(p.pair), [p]) for p in books]
    stream_of = {id(pair): stream for stream in streams for pair in stream.pairs}
    seq = 0
    connection = 1000

    def line(ns: int, text: str) -> bytes:
        nonlocal seq
        seq += 1
        return frame_line(ns, seq, text, True)

    def everywhere(data: bytes) -> None:
        for stream in streams:
            assert stream.writer is not None
            stream.writer.write(data)

    def connect() -> None:
        nonlocal connection
        connection += 1
        everywhere(meta_line(now, {"type": "connect"}))
        status: dict[str, object] = {
            "connectionID": connection,
            "event": "systemStatus",
            "status": "online",
        }
        if v2:
            entry = {"system": "online", "connection_id": connection}
            status = {"channel": "status", "type": "update", "data": [entry]}
        everywhere(line(now, orjson.dumps(status).decode()))
        for book in books:
            book.valid = True
            writer = stream_of[id(book)].writer
            assert writer is not None
            writer.write(line(now, book.market.snapshot_frame(1)))
            if not v2:
                writer.write(line(now, book.shallow.snapshot_frame(2)))

    for stream in streams:
        stream.open(now, now, rotate_ns)
    connect()
    for _ in range(frames):
        step = int(rng.expovariate(1.0) * gap_ns)
        if faults and rng.random() < 0.01:
            step = -rng.randrange(3 * gap_ns)  # the wall clock stepped back
        now += step
        clock[0] = now / SECOND
        book = books[rng.randrange(len(books))]
        stream = stream_of[id(book)]
        if now >= stream.boundary:
            stream.close(now)
            stream.open(now, now - now % rotate_ns, rotate_ns)
        writer = stream.writer
        assert writer is not None
        market = book.market
        roll = rng.random() if faults else 1.0
        if roll < 0.004:
            everywhere(meta_line(now, {"type": "disconnect", "reason": "test"}))
            for each in books:
                each.valid = False
            connect()
        elif roll < 0.008:
            writer.write(line(now, market.update_frame(1, bad_checksum=True)))
            book.valid = False
        elif roll < 0.012:
            status = {"event": "subscriptionStatus", "pair": book.pair, "status": "subscribed"}
            if v2:
                result = {"channel": "book", "depth": depth, "symbol": book.pair}
                status = {"method": "subscribe", "result": result, "success": True}
            writer.write(line(now, orjson.dumps(status).decode()))
            writer.write(line(now, market.snapshot_frame(1)))
            book.valid = True
        elif roll < 0.016 and not book.valid:
            writer.write(line(now, market.snapshot_frame(1)))
            book.valid = True
        elif roll < 0.018:
            bad = f'[1,{{"a":[["1.0"]],"c":"5"}},"{market.channel_name}","{book.pair}"]'
            if v2:
                bad = (
                    f'{{"channel":"book","type":"update","data":[{{"symbol":"{book.pair}",'
                    f'"asks":[{{"price":1.0}}],"bids":[],"checksum":5}}]}}'
                )
            writer.write(line(now, bad))
            book.valid = False
            market.update_frame(1)  # the lost update: the book moves on without us
        elif roll < 0.020:
            writer.write(b'{"recv_ns":%d,"msg":[1,2' % now + b"\n")
        elif roll < 0.022:
            writer.write(frame_line(now, seq, "not json", False))
        elif roll < 0.030:
            ticker = f'[3,["1.0","2.0"],"ticker","{book.pair}"]'
            if v2:
                ticker = (
                    f'{{"channel":"ticker","type":"update","data":[{{"symbol":"{book.pair}"}}]}}'
                )
            writer.write(line(now, ticker))
        elif roll < 0.060 and not v2:
            writer.write(line(now, book.shallow.update_frame(2)))
        elif roll < 0.080:
            everywhere(line(now, '{"channel":"heartbeat"}' if v2 else '{"event":"heartbeat"}'))
        else:
            writer.write(line(now, market.update_frame(1)))
    for stream in streams:
        stream.close(now)
    return root


def general(feed: BookFeed, line: bytes | bytearray | memoryview | str, clock: int) -> int:
    """The caller's path for a line ``run`` hands back (``replay.engine`` without its sampler):
    decode it (v2 lines, for a ``V2BookFeed``, with their number lexemes kept), advance the
    clock, apply it with ``on_message`` or ``on_meta``."""
    loads = decode_v2 if isinstance(feed, V2BookFeed) else orjson.loads
    try:
        record = loads(line)
    except (ValueError, TypeError, RecursionError):  # not JSON, or not bytes json can read
        return clock
    if type(record) is not dict or type(record.get("recv_ns")) is not int:
        return clock
    clock = max(clock, record["recv_ns"])
    if "msg" in record:
        feed.on_message(record["msg"], clock)
    elif type(record.get("meta")) is dict:
        feed.on_meta(record["meta"], clock)
    return clock
