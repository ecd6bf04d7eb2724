"""One WebSocket connection, read by its own thread: the socket can never block the caller's clock.

Design: a *reader thread* per connection opens it (``websockets``' sync client: the handshake
within ``connect_timeout_ns``, at most ``max_frame_bytes`` per message, no compression) and reads
every message as soon as it arrives, stamping its arrival on the monotonic clock. It hands
``Received(arrival_mono, text)`` to the consumer through ``Inbox``, a queue bounded in bytes and
messages; when the consumer falls behind, the reader waits and TCP holds the rest, so memory stays
bounded. The consumer (``kbook.live.session``) takes what is there with ``take(timeout)`` and
goes on with its own clock (flushing, rotation, signals, ``--duration``) whatever the socket does.
A message that has not arrived whole within ``stall_timeout_ns`` of the one before ends the
connection: a silent socket, a message trickled a byte at a time, a flood of pings, an endless
fragmented message or an endless stream of handshake header lines all end it the same way, with
the reason as the last item (``Closed``). Kraken sends a heartbeat every second, so a healthy feed
is never quiet that long.

Time the process did not run (SIGSTOP, a VM pause, a swap storm) does not count towards a stall:
a wait that overran by more than ``PAUSE_NS`` restarts the stall timer, so a socket full of data
after a pause is read, not declared dead. Nor does time the reader spent waiting for room in the
inbox (the consumer is behind: that is lag, not a stall).

Sends (subscribe requests, pings) go from the caller's thread; ``websockets`` serialises them with
its own lock. ``close`` never waits: the close handshake runs on a helper thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

SECOND = 1_000_000_000
MS = 1_000_000
PAUSE_NS = SECOND
"""A wait that returns this much later than asked means the process was paused, not the socket."""
POLL_NS = 100 * MS
"""How often the reader checks its stall timer and whether it was asked to close."""


class Dropped(Exception):
    """A send failed: the connection is gone (the reason comes as a ``Closed`` item too)."""


@dataclass(frozen=True, slots=True)
class Received:
    """A message as the reader got it: ``arrival_mono`` is ``time.monotonic_ns()`` on arrival."""

    arrival_mono: int
    text: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The handshake succeeded: requests may be sent now."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection ended (or never opened: ``opened`` is False); ``reason`` says why."""

    reason: str
    opened: bool


Item = Received | Opened | Closed


class Inbox:
    """A queue bounded in bytes and items: the reader waits when it is full, the consumer never."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._ready = threading.Condition()

    def put(self, item: Item, size: int, cancelled: threading.Event) -> bool:
        """Append ``item`` once there is room (one item is always let in, whatever its size);
        False when ``cancelled`` was set while waiting."""
        with self._ready:
            while self._items and (
                self._bytes + size > self.max_bytes or len(self._items) >= self.max_items
            ):
                if cancelled.is_set():
                    return False
                self._ready.wait(POLL_NS / SECOND)
            self._items.append(item)
            self._bytes += size
            self._ready.notify_all()
            return True

    def take(self, timeout_ns: int) -> list[Item]:
        """Everything waiting, in order; waits up to ``timeout_ns`` when nothing is."""
        with self._ready:
            if not self._items and timeout_ns > 0:
                self._ready.wait(timeout_ns / SECOND)
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._ready.notify_all()
            return items


class Connection:
    """One connection attempt and its life, read by a daemon thread; see the module docstring."""

    def __init__(
        self,
        url: str,
        connect_timeout_ns: int = 10 * SECOND,
        stall_timeout_ns: int = 10 * SECOND,
        max_frame_bytes: int = 16 * 1024 * 1024,
        inbox_bytes: int = 64 * 1024 * 1024,
        inbox_items: int = 100_000,
    ) -> None:
        self.url = url
        self.connect_timeout_ns = connect_timeout_ns
        self.stall_timeout_ns = stall_timeout_ns
        self.max_frame_bytes = max_frame_bytes
        self.inbox = Inbox(inbox_bytes, inbox_items)
        self.last_send_mono = time.monotonic_ns()
        self._ws: ClientConnection | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, name="kbook-reader", daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON request; ``Dropped`` when the connection is gone or not open."""
        ws = self._ws
        if ws is None:
            raise Dropped("not connected")
        try:
            ws.send(orjson.dumps(message).decode())
        except (OSError, WebSocketException, RuntimeError) as exc:
            raise Dropped(f"send failed: {_describe(exc)}") from exc
        self.last_send_mono = time.monotonic_ns()

    def close(self) -> None:
        """Stop reading and close politely in the background; returns at once."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            threading.Thread(target=_close_quietly, args=(ws,), daemon=True).start()

    # -- the reader thread ----------------------------------------------------------------------

    def _read(self) -> None:
        try:
            ws = connect(
                self.url,
                open_timeout=self.connect_timeout_ns / SECOND,
                max_size=self.max_frame_bytes,
                ping_interval=None,  # the session sends the API's own ping
                close_timeout=1,
                compression=None,
                proxy=None,
                user_agent_header=None,
            )
        except TimeoutError:
            seconds = self.connect_timeout_ns / SECOND
            self._end(f"no WebSocket handshake within {seconds:g} s", opened=False)
            return
        except (OSError, WebSocketException, InvalidURI, ValueError) as exc:
            self._end(_describe(exc), opened=False)
            return
        with ws:  # the context marks a connection owned for its whole life; leaving closes it
            self._ws = ws
            if self._closing.is_set():
                return
            self.inbox.put(Opened(), 0, self._closing)
            self._end(self._receive(ws), opened=True)

    def _receive(self, ws: ClientConnection) -> str:
        """Read until the connection ends; the reason it ended."""
        last_mono = time.monotonic_ns()
        while not self._closing.is_set():
            asked = min(POLL_NS, max(self.stall_timeout_ns - (time.monotonic_ns() - last_mono), 0))
            before = time.monotonic_ns()
            try:
                data = ws.recv(timeout=asked / SECOND, decode=False)
            except TimeoutError:
                now = time.monotonic_ns()
                failed = ws.protocol.close_sent
                if failed is not None:  # we failed the connection (a frame over the cap)
                    return _closed_by_us(failed.code, failed.reason, self.max_frame_bytes)
                if now - before > asked + PAUSE_NS:
                    last_mono = now  # the process was paused: that time is not the socket's
                elif now - last_mono >= self.stall_timeout_ns:
                    return f"stalled: no frame for {(now - last_mono) / SECOND:.1f} s"
                continue
            except ConnectionClosed as exc:
                return _close_reason(exc, self.max_frame_bytes)
            except (OSError, WebSocketException, RuntimeError) as exc:
                return _describe(exc)
            last_mono = time.monotonic_ns()
            # Kraken sends text frames only; anything else is kept, decoded as best we can.
            # UTF-8 is checked here, with replacement: a bad byte costs one character.
            text = data.decode("utf-8", errors="replace")
            if not self.inbox.put(Received(last_mono, text), len(data), self._closing):
                break
            # Time spent waiting for room in the inbox is the consumer's, not the socket's.
            last_mono = time.monotonic_ns()
        return "closed"

    def _end(self, reason: str, opened: bool) -> None:
        if not self._closing.is_set():
            self.inbox.put(Closed(reason, opened), 0, self._closing)


def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(OSError, WebSocketException, RuntimeError):
        ws.close()


def _describe(exc: BaseException) -> str:
    """A short, human reason for a socket or WebSocket failure."""
    if isinstance(exc, InvalidHandshake):
        return f"bad WebSocket handshake: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def _close_reason(exc: ConnectionClosed, max_frame_bytes: int) -> str:
    """Why the connection closed: the server's close frame, or ours (a frame over the cap)."""
    sent, received = exc.sent, exc.rcvd
    if sent is not None and sent.code != 1000:
        return _closed_by_us(sent.code, sent.reason, max_frame_bytes)
    if received is not None:
        text = f": {received.reason}" if received.reason else ""
        return f"closed by the server (code {received.code}{text})"
    return "connection closed by the server"


def _closed_by_us(code: int, reason: str, max_frame_bytes: int) -> str:
    """We failed the connection: a message over the cap (1009) or a protocol error."""
    if code == 1009:
        return f"a message larger than the frame limit ({max_frame_bytes} bytes)"
    return f"protocol error ({code}{': ' + reason if reason else ''})"
