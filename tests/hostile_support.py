"""A WebSocket server that misbehaves on purpose, and a recorder process to attack with it.

``HostileServer`` listens on 127.0.0.1 (port 0) and speaks just enough WebSocket, on raw asyncio
streams, to misbehave at the byte level: a normal handshake (or a slow or endless one), then a
welcome (Kraken v1's ``systemStatus``, the subscribe answer, ``WELCOME_FRAMES`` heartbeats), then
the attack, on every connection. ``sent`` holds every text message it sent whole, in order.

``RecorderProcess`` runs the real recorder (``tests/hostile_recorder.py``) with fast timings in a
child process, so that signals are real and its peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from kbook.errors import KbookError
from kbook.segment import PARTIAL_SUFFIX

MS = 1_000_000
SECOND = 1_000_000_000
WELCOME_FRAMES = 20
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RUNNER = Path(__file__).with_name("hostile_recorder.py")

TEXT, BINARY, CONTINUATION, PING = 0x1, 0x2, 0x0, 0x9


def header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A server frame's header (servers do not mask) for a payload of ``length`` bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, length])
    if length < 65536:
        return bytes([first, 126]) + length.to_bytes(2, "big")
    return bytes([first, 127]) + length.to_bytes(8, "big")


class Peer:
    """One accepted connection, with what an attack needs."""

    def __init__(self, server: HostileServer, reader: asyncio.StreamReader, writer: Any) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer

    async def handshake(self) -> None:
        request = await self.reader.readuntil(b"\r\n\r\n")
        key = ""
        for line in request.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await self.writer.drain()

    async def read_text(self) -> str:
        """The client's next text message (client frames are masked)."""
        while True:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            mask = await self.reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            data = bytes(
                b ^ mask[i % 4] for i, b in enumerate(await self.reader.readexactly(length))
            )
            if first & 0x0F == TEXT:
                return data.decode()

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        self.writer.write(header(TEXT, len(payload)) + payload)
        await self.writer.drain()
        self.server.sent.append(text)
        self.server.sent_at.append(time.monotonic())

    async def welcome(self, answer: bool = True) -> None:
        """``systemStatus``, the answer to the subscribe request, then the welcome heartbeats."""
        await self.send_text(
            orjson.dumps(
                {"event": "systemStatus", "status": "online", "connectionID": self.server.serial}
            ).decode()
        )
        request = orjson.loads(await self.read_text())
        if answer:
            for pair in request["pair"]:
                status = {"event": "subscriptionStatus", "status": "subscribed", "pair": pair}
                status["channelName"] = "book-10"
                status["subscription"] = {"name": "book", "depth": 10}
                await self.send_text(orjson.dumps(status).decode())
        await self.heartbeats(WELCOME_FRAMES)

    async def heartbeats(self, count: int) -> None:
        for _ in range(count):
            self.server.serial += 1
            await self.send_text(f'{{"event":"heartbeat","n":{self.server.serial}}}')


Attack = Callable[[Peer], Awaitable[None]]


class HostileServer:
    """Serves ``attack`` on every connection, in an asyncio loop of its own thread."""

    def __init__(
        self, attack: Attack, handshake: Attack | None = None, answer: bool = True
    ) -> None:
        """``handshake`` replaces the handshake (and all that follows) from the second
        connection on; ``answer``: answer the subscribe request."""
        self.attack = attack
        self.handshake = handshake
        self.answer = answer
        self.attacking = False
        """The current connection is past its welcome, inside the attack."""
        self.sent: list[str] = []
        self.sent_at: list[float] = []
        """``time.monotonic()`` when each of ``sent`` was written to the socket."""
        self.connections = 0
        self.attacks = 0
        """Connections on which the attack started (after the welcome)."""
        self.serial = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hostile", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        assert self._ready.wait(5), "the hostile server did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.connections += 1
        peer = Peer(self, reader, writer)
        try:
            if self.handshake is not None and self.connections > 1:
                await self.handshake(peer)
                return
            await peer.handshake()
            await peer.welcome(self.answer)
            self.attacks += 1
            self.attacking = True
            await self.attack(peer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.attacking = False
            writer.close()


# -- the recorder under attack ----------------------------------------------------------------


def vm_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RecorderProcess:
    """``tests/hostile_recorder.py``: the real recorder of one pair with fast timings."""

    def __init__(self, url: str, out: Path, **overrides: Any) -> None:
        self.out = out
        config = {"url": url, "out": str(out), **overrides}
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.peak_rss_kb = 0
        self.signalled_at = 0.0
        self.stderr = ""
        """What the process wrote to stderr, once it ended (``terminate``)."""

    def sample_rss(self) -> int:
        """The child's RSS now (kB); the peak seen so far is kept."""
        try:
            rss = vm_kb(self.process.pid)
        except OSError:
            return 0
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        return rss

    def partial_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.out.rglob("*" + PARTIAL_SUFFIX))

    def terminate(self, sig: int = signal.SIGTERM) -> tuple[float, dict[str, Any]]:
        """Send ``sig``; seconds until the process exited, and what it reported."""
        self.sample_rss()
        started = self.signalled_at = time.monotonic()
        self.process.send_signal(sig)
        stdout, stderr = self.process.communicate(timeout=20)
        self.stderr = stderr
        took = time.monotonic() - started
        assert self.process.returncode == 0, stderr
        report: dict[str, Any] = json.loads(stdout)
        self.peak_rss_kb = max(self.peak_rss_kb, int(report["maxrss_kb"]))
        return took, report

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.communicate(timeout=10)


def recorded_texts(out: Path) -> list[str]:
    """Frame texts readable under ``out`` so far (``.partial`` included), in ``seq`` order."""
    from record_support import read_output

    try:
        return read_output(out).texts
    except KbookError:  # nothing written yet, or a segment's first frame not flushed yet
        return []


IN_FLIGHT_S = 0.1
"""A frame sent this long before the stop signal has reached the recorder over loopback."""


def assert_nothing_received_lost(
    out: Path, server: HostileServer, recorder: RecorderProcess
) -> None:
    """The recording is what was sent, in order, without gaps; only frames sent in the last
    ``IN_FLIGHT_S`` before the signal may be missing (they may not have arrived)."""
    recorded = recorded_texts(out)
    assert recorded == server.sent[: len(recorded)], "the recording is not what was sent"
    arrived = sum(1 for at in server.sent_at if at < recorder.signalled_at - IN_FLIGHT_S)
    assert len(recorded) >= arrived, f"{arrived - len(recorded)} frame(s) received were lost"
