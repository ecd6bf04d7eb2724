"""One WebSocket session with Kraken: connect, send, receive text frames as received, keep alive.

websocket-client's low-level ``WebSocket`` is used rather than ``WebSocketApp`` so that the
recorder owns the read loop: ``recv`` waits at most one tick, which lets the caller flush, rotate
and notice a stop request between frames. A timeout in the middle of a frame is safe: the library
keeps the partial header and payload and resumes on the next call.

Keep-alive (``shared/kraken/README.md`` section 1): Kraken closes a connection that has been idle
for about a minute, so a ping (``ping``: the API's request, v1's by default) is sent when nothing
has been sent for ``ping_interval_ns``; and since Kraken sends a heartbeat about once a second
(v1 ``{"event":"heartbeat"}``, v2 ``{"channel":"heartbeat"}``: any frame counts), a connection that
delivers no frame at all for ``stall_timeout_ns`` is declared dead (``Dropped``) rather than
waited on forever.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import orjson
import websocket

from kbook.dialect import Dialect
from kbook.units import SECOND


class ConnectFailed(Exception):
    """A connection attempt failed (refused, unreachable, bad handshake); the message says why."""


class Dropped(Exception):
    """An open connection ended (closed, reset, stalled); the message is the reason."""


class Connection:
    """An open connection; every failure surfaces as ``Dropped`` with a reason."""

    def __init__(
        self,
        url: str,
        connect_timeout_ns: int = 10 * SECOND,
        stall_timeout_ns: int = 10 * SECOND,
        ping_interval_ns: int = 30 * SECOND,
        ping: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        """``ping`` builds the keep-alive request for a request id (default: v1's ping event)."""
        self.url = url
        self.stall_timeout_ns = stall_timeout_ns
        self.ping_interval_ns = ping_interval_ns
        self._ping = ping or Dialect().ping
        # UTF-8 is checked by our own decode (with replacement), so a bad byte costs one
        # character rather than the whole connection.
        self._ws = websocket.WebSocket(skip_utf8_validation=True)
        self._ping_reqid = 0
        try:
            self._ws.connect(url, timeout=connect_timeout_ns / SECOND)
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            self._ws.shutdown()
            raise ConnectFailed(_describe(exc)) from exc
        now = time.monotonic_ns()
        self.last_recv_mono = now
        self.last_send_mono = now

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON request; a failure means the connection is gone."""
        try:
            self._ws.send(orjson.dumps(message).decode())
        except (OSError, websocket.WebSocketException) as exc:
            raise Dropped(f"send failed: {_describe(exc)}") from exc
        self.last_send_mono = time.monotonic_ns()

    def recv(self, timeout_ns: int) -> str | None:
        """The next text frame, or None when none came within ``timeout_ns``.

        Raises ``Dropped`` when the server closes, the socket fails, or the connection stalled.
        Sends a keep-alive ping when due.
        """
        now = time.monotonic_ns()
        if now - self.last_recv_mono >= self.stall_timeout_ns:
            raise Dropped(f"stalled: no frame for {(now - self.last_recv_mono) / SECOND:.1f} s")
        if now - self.last_send_mono >= self.ping_interval_ns:
            self._ping_reqid += 1
            self.send(self._ping(self._ping_reqid))
        self._ws.settimeout(max(timeout_ns, 1_000_000) / SECOND)
        try:
            opcode, data = self._ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as exc:
            raise Dropped(_describe(exc)) from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise Dropped(_close_reason(data))
        self.last_recv_mono = time.monotonic_ns()
        if isinstance(data, bytes):
            # Kraken sends text frames only; anything else is kept, decoded as best we can.
            return data.decode("utf-8", errors="replace")
        return str(data)

    def readable(self, timeout_ns: int) -> bool:
        """True when bytes are waiting on the socket (used to drain it before closing)."""
        sock = self._ws.sock
        if sock is None:
            return False
        if hasattr(sock, "pending") and sock.pending():
            return True  # TLS keeps decrypted bytes that select cannot see
        try:
            ready, _, _ = select.select([sock], [], [], timeout_ns / SECOND)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def close(self) -> None:
        """Close politely, never raising: the connection may already be gone."""
        try:
            self._ws.close(timeout=1.0)
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            self._ws.shutdown()


def _describe(exc: BaseException) -> str:
    """A short, human reason for a socket or WebSocket failure."""
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return "connection closed by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def _close_reason(data: bytes | str) -> str:
    """The reason in a close frame: ``code`` (2 bytes) then optional text."""
    payload = data.encode() if isinstance(data, str) else data
    if len(payload) >= 2:
        code = int.from_bytes(payload[:2], "big")
        text = payload[2:].decode("utf-8", errors="replace")
        return f"closed by the server (code {code}{': ' + text if text else ''})"
    return "closed by the server"
