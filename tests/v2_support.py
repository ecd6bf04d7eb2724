"""A plain websocket-client speaking Kraken v2 to the simulator, with a V2BookFeed checking every
checksum, and helpers to write what it received as kbook segments."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import websocket
from sim_support import Client, Dropped, ServerClosed

from kbook.feed import Outcome
from kbook.segment import frame_line, meta_line, write_segment
from kbook.v2 import V2BookFeed, decode

V2_TIMES = re.compile(r'"(timestamp|time_in|time_out)":"[^"]*"')
START_NS = 1_700_000_000_000_000_000


def strip_v2_times(text: str) -> str:
    """A v2 frame with its RFC 3339 times blanked, for comparing runs of the same seed."""
    return V2_TIMES.sub(r'"\1":"T"', text)


class V2Client(Client):
    """One v2 connection; ``status`` is its first frame (the status channel).

    Frames are decoded with ``kbook.v2.decode`` (float lexemes kept) and fed to a ``V2BookFeed``.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.feed = V2BookFeed()
        self.outcomes: Counter[Outcome] = Counter()
        self.texts: list[str] = []
        self.status = self.recv()

    def subscribe(
        self,
        symbols: list[str],
        depth: int | None = 10,
        req_id: int | None = None,
        snapshot: bool | None = None,
        method: str = "subscribe",
    ) -> None:
        params: dict[str, Any] = {"channel": "book", "symbol": symbols}
        if depth is not None:
            params["depth"] = depth
        if snapshot is not None:
            params["snapshot"] = snapshot
        request: dict[str, Any] = {"method": method, "params": params}
        if req_id is not None:
            request["req_id"] = req_id
        self.send(request)

    def unsubscribe(
        self, symbols: list[str], depth: int | None = 10, req_id: int | None = None
    ) -> None:
        self.subscribe(symbols, depth, req_id, method="unsubscribe")

    def recv(self) -> Any:
        """The next frame, decoded (lexemes kept) and fed to the V2BookFeed."""
        msg = decode(self.recv_text())
        self.outcomes[self.feed.on_message(msg, 0)] += 1
        return msg

    def read_to_end(self) -> int | None:
        """Read (feeding books) until the server ends the connection; the close code or None."""
        while True:
            try:
                text = self.recv_text()
            except ServerClosed as closed:
                return closed.code
            except Dropped:
                return None
            try:
                msg = decode(text)
            except ValueError:
                continue
            self.outcomes[self.feed.on_message(msg, 0)] += 1

    def recv_method(self, method: str, limit: int = 100_000) -> dict[str, Any]:
        """Read (feeding books) until a frame with this ``method`` arrives."""
        for _ in range(limit):
            msg = self.recv()
            if msg.get("method") == method:
                return msg
        raise AssertionError(f"no {method} within {limit} frames")

    def recv_channel(self, channel: str, limit: int = 100_000) -> dict[str, Any]:
        """Read (feeding books) until a frame of this ``channel`` arrives."""
        for _ in range(limit):
            msg = self.recv()
            if msg.get("channel") == channel:
                return msg
        raise AssertionError(f"no {channel} frame within {limit} frames")

    def read_updates(self, count: int) -> None:
        """Read until ``count`` book updates have arrived (verified or not)."""
        seen = 0
        while seen < count:
            msg = self.recv()
            if msg.get("channel") == "book" and msg.get("type") == "update":
                seen += 1


def write_v2_segment(path: Path, texts: list[str], *, session_start: bool = True) -> Path:
    """``texts`` as a kbook segment, each frame's text exactly as received, 1 ms apart.

    With ``session_start`` the first line is the recorder's ``session_start`` meta naming v2.
    """
    lines = []
    if session_start:
        meta = {"type": "session_start", "kbook": "test", "api": "v2", "pair": "BTC/USD"}
        lines.append(meta_line(START_NS, meta))
    for seq, text in enumerate(texts):
        lines.append(frame_line(START_NS + (seq + 1) * 1_000_000, seq, text, True))
    return write_segment(path, lines)


def book_texts(texts: list[str]) -> list[str]:
    return [text for text in texts if text.startswith('{"channel":"book"')]
