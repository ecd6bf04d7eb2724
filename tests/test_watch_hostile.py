"""``kbook watch`` runs the recorder's live session, so a hostile server cannot hang it either:
a trickled message is a stall, the view stays fresh, and the watch stops at once when asked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hostile_support import TEXT, HostileServer, Peer, header
from record_support import wait_until
from watch_support import watching


def test_a_trickled_message_is_a_stall_and_the_view_stays_fresh(tmp_path: Path) -> None:
    async def trickle(peer: Peer) -> None:
        peer.writer.write(header(TEXT, 10_000_000))
        while True:
            peer.writer.write(b"x" * 100)
            await peer.writer.drain()
            await asyncio.sleep(0.05)

    with HostileServer(trickle) as server, watching(server.url) as screen:
        wait_until(lambda: server.attacks >= 1, 10, "the attack")
        views = len(screen.shown)
        # The view is redrawn on the watch's own clock while the message trickles in...
        wait_until(lambda: len(screen.shown) >= views + 10, 5, "fresh views during the attack")
        # ...and the stall ends the connection, which is replaced.
        wait_until(lambda: screen.last.reconnects >= 1, 10, "a reconnect after the stall")
        assert any("stalled" in str(status.note) for status, _ in screen.shown)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.0
