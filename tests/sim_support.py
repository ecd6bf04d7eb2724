"""Plain websocket-clients talking to the simulator, one per API (``Client``: v1, ``V2Client``),
each with a book builder checking every checksum, and helpers to write what a client received as
kbook segments. ``apis.CASES`` says which client goes with which API."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import websocket

from kbook import v2
from kbook.dialect import Answer, Dialect, FrameKind, V2Dialect
from kbook.feed import BookFeed, Outcome
from kbook.segment import frame_line, meta_line, write_segment


class ServerClosed(Exception):
    """The server ended the connection with a close frame; ``code`` is its close code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed by the server with code {code}")
        self.code = code


class Dropped(Exception):
    """The TCP connection ended without a close frame."""


TIMESTAMP = re.compile(r'"\d{10}\.\d{6}"')
V2_TIMES = re.compile(r'"(timestamp|time_in|time_out)":"[^"]*"')
START_NS = 1_700_000_000_000_000_000


def strip_timestamps(text: str) -> str:
    """A frame with every level timestamp blanked, for comparing runs of the same seed."""
    return TIMESTAMP.sub('"T"', text)


def strip_v2_times(text: str) -> str:
    """A v2 frame with its RFC 3339 times blanked, for comparing runs of the same seed."""
    return V2_TIMES.sub(r'"\1":"T"', text)


class Client:
    """One v1 connection to a simulator; ``status`` is its first frame (systemStatus)."""

    decode: Callable[[str], Any] = staticmethod(orjson.loads)
    """How frames are read: orjson is exact for v1, whose numbers are strings."""
    new_feed: Callable[[], BookFeed] = BookFeed
    dialect: Dialect = Dialect()
    """How kbook reads and speaks this API (``kbook.dialect``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.feed = self.new_feed()
        self.outcomes: Counter[Outcome] = Counter()
        self.texts: list[str] = []
        self.status = self.recv()

    def send(self, obj: dict[str, Any]) -> None:
        self.ws.send(orjson.dumps(obj).decode())

    def subscribe(self, pairs: list[str], depth: int | None = 10, reqid: int | None = None) -> None:
        subscription: dict[str, Any] = {"name": "book"}
        if depth is not None:
            subscription["depth"] = depth
        request: dict[str, Any] = {
            "event": "subscribe",
            "pair": pairs,
            "subscription": subscription,
        }
        if reqid is not None:
            request["reqid"] = reqid
        self.send(request)

    def recv_text(self) -> str:
        """The next text frame; raises ``ServerClosed`` or ``Dropped`` when the connection ends."""
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except (websocket.WebSocketConnectionClosedException, ConnectionError) as exc:
                raise Dropped(str(exc)) from exc
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
                raise ServerClosed(code)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                text = frame.data.decode("utf-8")
                self.texts.append(text)
                return text

    def read_to_end(self) -> int | None:
        """Read (feeding books) until the server ends the connection.

        Returns the close code, or None when the connection was cut without a close frame.
        """
        while True:
            try:
                text = self.recv_text()
            except ServerClosed as closed:
                return closed.code
            except Dropped:
                return None
            try:
                msg = self.decode(text)
            except ValueError:  # not JSON (orjson's error is a ValueError too)
                continue
            self.outcomes[self.feed.on_message(msg, 0)] += 1

    def recv(self) -> Any:
        """The next frame, decoded and fed to the book builder."""
        msg = self.decode(self.recv_text())
        self.outcomes[self.feed.on_message(msg, 0)] += 1
        return msg

    def recv_event(self, event: str, limit: int = 100_000) -> dict[str, Any]:
        """Read (feeding books) until a control frame with this ``event`` arrives."""
        for _ in range(limit):
            msg = self.recv()
            if type(msg) is dict and msg.get("event") == event:
                return msg
        raise AssertionError(f"no {event} within {limit} frames")

    def read_updates(self, count: int) -> None:
        """Read until ``count`` book updates have arrived (verified or not)."""
        seen = 0
        while seen < count:
            msg = self.recv()
            if type(msg) is list and "as" not in msg[1] and "bs" not in msg[1]:
                seen += 1

    def book_frames(self, texts: list[str] | None = None) -> int:
        """How many of ``texts`` (default: every text received) are book snapshots or updates."""
        count = 0
        for text in self.texts if texts is None else texts:
            try:
                msg = self.decode(text)
            except ValueError:  # the non-JSON fault
                continue
            count += self.dialect.kind(msg) in (FrameKind.SNAPSHOT, FrameKind.UPDATE)
        return count

    def recv_answer(self, limit: int = 100_000) -> Answer:
        """Read (feeding books) until an answer to a request arrives (``Dialect.answer``)."""
        for _ in range(limit):
            answer = self.dialect.answer(self.recv())
            if answer is not None:
                return answer
        raise AssertionError(f"no answer within {limit} frames")

    def close(self) -> None:
        """Close politely if still open; always release the socket."""
        self.ws.close(timeout=0.5)
        self.ws.shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class V2Client(Client):
    """One v2 connection; ``status`` is its first frame (the status channel).

    Frames are decoded with ``kbook.v2.decode`` (float lexemes kept) and fed to a ``V2BookFeed``.
    """

    decode = staticmethod(v2.decode)
    new_feed = v2.V2BookFeed
    dialect = V2Dialect()

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
