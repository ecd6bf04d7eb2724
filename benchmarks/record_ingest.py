"""How many frames per second one recorder ingests from a fast local sender, with its CPU and RSS.

    .venv/bin/python benchmarks/record_ingest.py [--frames 100000] [--depth 1000] [--pairs 1 300]

For each pair count: a sender process (pre-built v1 frames of ``kbook.sim.Market``, depth
``--depth``: one snapshot per pair, then updates round robin with valid checksums, written to the
socket as fast as the recorder reads) and the real ``Recorder`` in this process (every frame
written to zstd segments, every book kept live and its checksum checked). Prints one line per
pair count, side by side: frames/s of the updates (from the moment every snapshot is in to the
last update recorded), frames per CPU second of this process over that time (the figure to read
on a shared machine, where the wall rate only says what share of a core it got; the recorder's
reader and writer threads share one core, through the GIL), and RSS after the snapshots, at the
end and at its peak. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing
import resource
import tempfile
import threading
import time
from pathlib import Path

import orjson

from kbook.api import Api
from kbook.sim import Market
from recorder import RecordConfig, Recorder

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pair_names(count: int) -> list[str]:
    return ["XBT/USD"] + [f"C{index:03d}/USD" for index in range(1, count)]


def build_frames(pairs: list[str], depth: int, updates: int) -> list[bytes]:
    """Snapshots first, then ``updates`` updates round robin over the pairs."""
    markets = [Market(pair, depth, seed=7, clock=lambda: 1_700_000_000.0) for pair in pairs]
    texts = [market.snapshot_frame(index) for index, market in enumerate(markets)]
    for step in range(updates):
        index = step % len(markets)
        texts.append(markets[index].update_frame(index))
    return [text.encode() for text in texts]


def ws_frame(payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        head = bytes([0x81, length])
    elif length < 65536:
        head = bytes([0x81, 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + length.to_bytes(8, "big")
    return head + payload


def sender(pairs: list[str], depth: int, updates: int, port_out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """The sender process: answer the handshake and the subscription, then send every frame."""
    frames = build_frames(pairs, depth, updates)
    blob = b"".join(ws_frame(frame) for frame in frames)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in request.split("\r\n")
            if line.lower().startswith("sec-websocket-key")
        )
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await reader.readexactly(2)  # the subscribe request: read it whole, answer every pair
        for pair in pairs:
            answer = {"event": "subscriptionStatus", "status": "subscribed", "pair": pair}
            answer |= {"channelName": f"book-{depth}", "subscription": {"name": "book"}}
            writer.write(ws_frame(orjson.dumps(answer)))
        for start in range(0, len(blob), 1 << 20):
            writer.write(blob[start : start + (1 << 20)])
            await writer.drain()
        try:
            while True:
                writer.write(ws_frame(b'{"event":"heartbeat"}'))
                await writer.drain()
                await asyncio.sleep(0.5)
        except ConnectionError:
            return  # the recorder stopped: this run is over

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port_out.put((server.sockets[0].getsockname()[1], len(frames)))
        await asyncio.Event().wait()

    asyncio.run(main())


def run(pairs: list[str], depth: int, updates: int) -> str:
    ports: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    process = multiprocessing.Process(target=sender, args=(pairs, depth, updates, ports))
    process.start()
    port, total = ports.get(timeout=600)
    with tempfile.TemporaryDirectory() as out:
        config = RecordConfig(
            pairs=tuple(pairs), depth=depth, out=Path(out), url=f"ws://127.0.0.1:{port}",
            api=Api.V1, quiet=True,
        )  # fmt: skip
        recorder = Recorder(config)
        thread = threading.Thread(target=recorder.run)
        thread.start()
        # The answers and the snapshots first (hundreds of depth-1000 snapshots are built by
        # the Python book, once per subscription): the rate is that of the updates after them.
        books = 2 * len(pairs)
        while recorder.frames < books:
            time.sleep(0.001)
        started = time.perf_counter()
        cpu_started = time.process_time()
        rss_start = rss_kb()
        expected = total + len(pairs)  # the answers too
        while recorder.frames < expected:
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        rss_end = rss_kb()
        recorder.stop()
        thread.join()
    process.terminate()
    process.join()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frames = expected - books
    return (
        f"{len(pairs):>4} pair(s) depth {depth}: {frames / seconds:>9,.0f} frames/s wall, "
        f"{frames / cpu:>9,.0f} frames per CPU second ({cpu / seconds:.0%} of a core), "
        f"RSS {rss_start / 1024:,.0f} MB after the snapshots, {rss_end / 1024:,.0f} MB at the "
        f"end, peak {peak_mb:,.0f} MB ({frames:,} updates in {seconds:.1f} s)"
    )


def rss_kb() -> int:
    """This process's resident set now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="updates to send")
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 300])
    args = parser.parse_args()
    for count in args.pairs:
        print(run(pair_names(count), args.depth, args.frames), flush=True)


if __name__ == "__main__":
    main()
