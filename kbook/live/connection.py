"""One WebSocket connection, read by its own thread: the socket can never block the caller's clock.

Design: a *reader thread* per connection opens it (TCP, TLS, the WebSocket handshake, all within
``connect_timeout_ns``) and reads the socket as soon as bytes arrive. The WebSocket protocol is
``websockets``' Sans-I/O ``ClientProtocol`` (framing, masking, pongs to pings, close handshake, at
most ``max_frame_bytes`` per message, fragments included): this thread owns the socket, so it sees
every byte and every deadline itself. Each socket read may complete many messages; they are
stamped with their arrival (monotonic clock) and handed to the consumer in one batch through
``Inbox``, a queue bounded in bytes and messages. When the consumer falls behind, the reader waits
and TCP holds the rest, so memory stays bounded. The consumer (``kbook.live.session``) takes what
is there with ``take(timeout)`` and goes on with its own clock (flushing, rotation, signals,
``--duration``) whatever the socket does.

A message that has not arrived whole within ``stall_timeout_ns`` of the one before ends the
connection: a silent socket, a message trickled a byte at a time, a flood of pings, an endless
fragmented message all end it the same way, with the reason as the last item (``Closed``); a
handshake that is not done by the connect timeout (one byte at a time, endless header lines)
ends the attempt. Kraken sends a heartbeat every second, so a healthy feed is never quiet that
long.

Time the process did not run (SIGSTOP, a VM pause, a swap storm) does not count towards a stall:
a wait that overran by more than ``PAUSE_NS`` restarts the stall timer, so a socket full of data
after a pause is read, not declared dead. Nor does time the reader spent waiting for room in the
inbox (the consumer is behind: that is lag, not a stall).

Sends (subscribe requests, pings) go from the caller's thread, under the lock that guards the
protocol object. ``close`` never waits: the close frame is sent from a helper thread.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from kbook.units import MS, SECOND

PAUSE_NS = SECOND
"""A wait that returns this much later than asked means the process was paused, not the socket."""
POLL_NS = 100 * MS
"""How often the reader checks its stall timer and whether it was asked to close."""


class Dropped(Exception):
    """A send failed: the connection is gone (the reason comes as a ``Closed`` item too)."""


@dataclass(frozen=True, slots=True)
class Received:
    """The messages one socket read completed, in order: ``arrival_mono`` is
    ``time.monotonic_ns()`` on arrival (or when the reader began to wait for room in the inbox,
    if it had to: they may have waited in the socket since)."""

    arrival_mono: int
    texts: list[str]


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
        self._count = 0
        self._ready = threading.Condition()

    def put(self, item: Item, size: int, cancelled: threading.Event, count: int = 1) -> bool:
        """Append ``item`` (``count`` messages, ``size`` bytes) once there is room (an item is
        always let into an empty inbox, whatever its size); False when ``cancelled`` was set
        while waiting."""
        with self._ready:
            while self._items and (
                self._bytes + size > self.max_bytes or self._count + count > self.max_items
            ):
                if cancelled.is_set():
                    return False
                self._ready.wait(POLL_NS / SECOND)
            self._items.append(item)
            self._bytes += size
            self._count += count
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
            self._count = 0
            self._ready.notify_all()
            return items


class FrameSplitter:
    """Cuts plain frames from the bytes a server sends: each one whole, unfragmented text or
    binary message in an unmasked frame with no extension bits, at most ``max_frame_bytes``.

    ``split`` returns the texts of the frames completed so far (UTF-8 decoded with replacement:
    a bad byte costs one character), their size, and, at the first frame that is not plain (or
    over the limit), the bytes from that frame on, for ``websockets``' protocol to read
    instead: it refuses, answers or closes exactly as it would have. A frame begun is kept
    until it is whole; the limit bounds what is kept.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 2
        """Bytes needed before the next frame can be cut (its header, or all of it)."""

    def split(self, data: bytes) -> tuple[list[str], int, bytes | None]:
        self._chunks.append(data)
        self._have += len(data)
        if self._have < self._need:
            return [], 0, None
        buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        texts: list[str] = []
        size = pos = 0
        end = len(buf)
        need = 2
        while end - pos >= 2:
            first, length = buf[pos], buf[pos + 1]
            if (first != _TEXT_FIN and first != _BINARY_FIN) or length & 0x80:
                self._chunks, self._have = [], 0
                return texts, size, buf[pos:]
            head = 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if end - pos < head:
                need = head
                break
            if head > 2:
                length = int.from_bytes(buf[pos + 2 : pos + head], "big")
            if length > self.max_frame_bytes:
                self._chunks, self._have = [], 0
                return texts, size, buf[pos:]
            stop = pos + head + length
            if stop > end:
                need = head + length
                break
            texts.append(buf[pos + head : stop].decode("utf-8", errors="replace"))
            size += length
            pos = stop
        rest = buf[pos:] if pos else buf
        self._chunks = [rest] if rest else []
        self._have = len(rest)
        self._need = need
        return texts, size, None


_TEXT_FIN = 0x80 | Opcode.TEXT.value
_BINARY_FIN = 0x80 | Opcode.BINARY.value

READ_BYTES = 1 << 18
"""Bytes asked of the socket per read: every message they complete is handed over at once."""


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
        self._sock: socket.socket | None = None
        self._protocol: ClientProtocol | None = None
        self._lock = threading.Lock()
        """Held while the protocol or the socket's sending side is used (two threads use them)."""
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._read, name="kbook-reader", daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON request; ``Dropped`` when the connection is gone or not open."""
        with self._lock:
            protocol, sock = self._protocol, self._sock
            if protocol is None or sock is None or protocol.state is not State.OPEN:
                raise Dropped("not connected")
            try:
                protocol.send_text(orjson.dumps(message))
                sock.sendall(b"".join(protocol.data_to_send()))
            except (OSError, WebSocketException) as exc:
                raise Dropped(f"send failed: {_describe(exc)}") from exc
        self.last_send_mono = time.monotonic_ns()

    def close(self) -> None:
        """Stop reading and close politely in the background; returns at once."""
        self._closing.set()
        threading.Thread(target=self._close_politely, daemon=True).start()

    # -- the reader thread ----------------------------------------------------------------------

    def _read(self) -> None:
        try:
            sock, protocol, early = self._open(time.monotonic_ns() + self.connect_timeout_ns)
        except TimeoutError:
            seconds = self.connect_timeout_ns / SECOND
            self._end(f"no WebSocket handshake within {seconds:g} s", opened=False)
            return
        except (OSError, WebSocketException, InvalidURI, ValueError) as exc:
            self._end(_describe(exc), opened=False)
            return
        with self._lock:
            self._sock, self._protocol = sock, protocol
        if self._closing.is_set():
            self._close_politely()
            return
        self.inbox.put(Opened(), 0, self._closing)
        reason = self._receive(sock, protocol, early)
        self._end(reason, opened=True)
        self._close_politely()

    def _open(self, deadline: int) -> tuple[socket.socket, ClientProtocol, bytes]:
        """TCP, TLS and the WebSocket handshake, all within ``deadline`` (monotonic ns); the
        bytes that came after the handshake's answer (frames: ``_receive`` takes them)."""

        def left() -> float:
            seconds = (deadline - time.monotonic_ns()) / SECOND
            if seconds <= 0:
                raise TimeoutError
            return seconds

        uri = parse_uri(self.url)
        sock = socket.create_connection((uri.host, uri.port), timeout=left())
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                sock.settimeout(left())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=uri.host)
            protocol = ClientProtocol(uri, max_size=self.max_frame_bytes)
            protocol.send_request(protocol.connect())
            sock.settimeout(left())
            sock.sendall(b"".join(protocol.data_to_send()))
            tail = b""  # the last bytes given to the protocol, to find the end of the headers
            while True:
                sock.settimeout(left())
                data = sock.recv(READ_BYTES)
                after = b""
                if data:
                    # The protocol gets the answer up to its blank line only: what follows is
                    # frames, read by ``_receive`` from a frame boundary.
                    cut = (tail + data).find(b"\r\n\r\n")
                    if cut >= 0:
                        cut += 4 - len(tail)
                        data, after = data[:cut], data[cut:]
                    tail = (tail + data)[-3:]
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                protocol.events_received()
                if protocol.handshake_exc is not None:
                    raise protocol.handshake_exc
                if protocol.state is State.OPEN:
                    return sock, protocol, after
                if not data:
                    raise ConnectionError("connection closed during the WebSocket handshake")
        except BaseException:
            sock.close()
            raise

    def _receive(self, sock: socket.socket, protocol: ClientProtocol, early: bytes) -> str:
        """Read until the connection ends; the reason it ended.

        Plain frames (a whole text or binary message in one unmasked frame within the size
        limit: all Kraken sends) are cut from the bytes by ``FrameSplitter``, at a fraction of
        the cost of the protocol's parser. At the first frame of any other kind (a ping, a
        close, a fragment, anything odd) the rest of the bytes go to ``websockets``' protocol,
        which then reads this connection to its end: the protocol's parser has seen nothing
        since the handshake, so it starts at a frame boundary.
        """
        fragments: list[bytes] = []
        splitter: FrameSplitter | None = FrameSplitter(self.max_frame_bytes)
        last_mono = time.monotonic_ns()
        waited_since: int | None = None
        data: bytes | None = early or None
        """Bytes read and not taken in yet (``b""``: the end of the stream)."""
        while not self._closing.is_set():
            if data is not None:
                now = time.monotonic_ns()
                texts: list[str] = []
                size = 0
                rest: bytes | None = data
                if splitter is not None and data:
                    texts, size, rest = splitter.split(data)
                    if rest is not None:
                        splitter = None
                events: list[Any] = []
                if rest is not None and (rest or not data):
                    with self._lock:
                        if rest:
                            protocol.receive_data(rest)
                        else:
                            protocol.receive_eof()
                        events = protocol.events_received()
                        replies = protocol.data_to_send()  # pongs, the answer to a close
                        if replies:
                            try:
                                sock.sendall(b"".join(replies))
                            except OSError as exc:
                                return _describe(exc)
                    more, more_size = self._messages(events, fragments)
                    texts += more
                    size += more_size
                if texts:
                    arrival = now if waited_since is None else waited_since
                    before = time.monotonic_ns()
                    item = Received(arrival, texts)
                    if not self.inbox.put(item, size, self._closing, len(texts)):
                        break
                    last_mono = time.monotonic_ns()
                    # Waiting for room is the consumer's time, not the socket's; what is read
                    # next may have waited in the socket since the wait began.
                    waited_since = before if last_mono - before > MS else None
                if not data and not events:
                    return (
                        _ended(protocol, self.max_frame_bytes) or "connection closed by the server"
                    )
                data = None
            ended = _ended(protocol, self.max_frame_bytes)
            if ended is not None:
                return ended
            asked = min(POLL_NS, max(self.stall_timeout_ns - (time.monotonic_ns() - last_mono), 0))
            before = time.monotonic_ns()
            try:
                sock.settimeout(max(asked, MS) / SECOND)
                data = sock.recv(READ_BYTES)
            except TimeoutError:
                now = time.monotonic_ns()
                if now - before > asked + PAUSE_NS:
                    last_mono = now  # the process was paused: that time is not the socket's
                elif now - last_mono >= self.stall_timeout_ns:
                    return f"stalled: no frame for {(now - last_mono) / SECOND:.1f} s"
                continue
            except OSError as exc:
                return _describe(exc)
        return "closed"

    @staticmethod
    def _messages(events: list[Any], fragments: list[bytes]) -> tuple[list[str], int]:
        """Whole messages among ``events`` (frames) and their size; pings, pongs and closes are
        the protocol's. ``fragments`` carries a message begun but not ended."""
        batch: list[str] = []
        size = 0
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            opcode, payload = frame.opcode, frame.data
            if type(payload) is not bytes:
                payload = bytes(payload)
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                fragments.clear()
                fragments.append(payload)
            elif opcode is Opcode.CONT:
                fragments.append(payload)
            else:
                continue
            if frame.fin:
                data = fragments[0] if len(fragments) == 1 else b"".join(fragments)
                fragments.clear()
                # Kraken sends text frames only; anything else is kept, decoded as best we can.
                # UTF-8 is checked here, with replacement: a bad byte costs one character.
                batch.append(data.decode("utf-8", errors="replace"))
                size += len(data)
        return batch, size

    def _end(self, reason: str, opened: bool) -> None:
        if not self._closing.is_set():
            self.inbox.put(Closed(reason, opened), 0, self._closing)

    def _close_politely(self) -> None:
        """A close frame if the connection is open, then the socket closed; never raises."""
        with self._lock:
            protocol, sock = self._protocol, self._sock
            self._protocol = None
            if sock is None:
                return
            try:
                if protocol is not None and protocol.state is State.OPEN:
                    protocol.send_close()
                    sock.settimeout(0.2)
                    sock.sendall(b"".join(protocol.data_to_send()))
            except (OSError, WebSocketException):
                pass
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _ended(protocol: ClientProtocol, max_frame_bytes: int) -> str | None:
    """Why the protocol ended the connection, if it did: our close (a frame over the cap, a
    protocol error) or the server's."""
    sent, received = protocol.close_sent, protocol.close_rcvd
    if sent is not None and sent.code != 1000:
        return _closed_by_us(sent.code, sent.reason, max_frame_bytes)
    if received is not None:
        text = f": {received.reason}" if received.reason else ""
        return f"closed by the server (code {received.code}{text})"
    if protocol.state is State.CLOSED:
        return "connection closed by the server"
    return None


def _describe(exc: BaseException) -> str:
    """A short, human reason for a socket or WebSocket failure."""
    if isinstance(exc, InvalidHandshake):
        return f"bad WebSocket handshake: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def _closed_by_us(code: int, reason: str, max_frame_bytes: int) -> str:
    """We failed the connection: a message over the cap (1009) or a protocol error."""
    if code == 1009:
        return f"a message larger than the frame limit ({max_frame_bytes} bytes)"
    return f"protocol error ({code}{': ' + reason if reason else ''})"
