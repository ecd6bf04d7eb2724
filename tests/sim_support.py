"""A plain websocket-client talking to the simulator, with a BookFeed checking every checksum."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson
import websocket

from kbook.feed import BookFeed, Outcome


class ServerClosed(Exception):
    """The server ended the connection with a close frame; ``code`` is its close code."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed by the server with code {code}")
        self.code = code


class Dropped(Exception):
    """The TCP connection ended without a close frame."""


TIMESTAMP = re.compile(r'"\d{10}\.\d{6}"')


def strip_timestamps(text: str) -> str:
    """A frame with every level timestamp blanked, for comparing runs of the same seed."""
    return TIMESTAMP.sub('"T"', text)


class Client:
    """One connection to a simulator; ``status`` is its first frame (systemStatus)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.feed = BookFeed()
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
                msg = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            self.outcomes[self.feed.on_message(msg, 0)] += 1

    def recv(self) -> Any:
        """The next frame, decoded and fed to the BookFeed."""
        msg = orjson.loads(self.recv_text())
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

    def close(self) -> None:
        """Close politely if still open; always release the socket."""
        self.ws.close(timeout=0.5)
        self.ws.shutdown()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
