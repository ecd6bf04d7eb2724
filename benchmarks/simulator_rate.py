"""How many book messages per second the simulator delivers to one client.

    /work/venv/bin/python benchmarks/simulator_rate.py [--seconds 5] [--depth 10] [--pairs 2]
        [--rate 0] [--verify]

Starts a ``Simulator`` (rate 0: as fast as the client reads), connects one plain websocket-client,
subscribes, and counts the book updates received. ``--verify`` also feeds every frame to a
``BookFeed`` and checks every checksum (the client then becomes the bottleneck). Prints one line
per run; not a test.
"""

from __future__ import annotations

import argparse
import time

import orjson
import websocket

from kbook.feed import BookFeed, Outcome
from kbook.sim import Market, Simulator, SimulatorConfig

PAIRS = ("XBT/USD", "ETH/USD", "XDG/USD", "SOL/USD")


def generation_rate(depth: int, count: int = 50_000) -> float:
    """Updates per second ``Market`` alone generates (no socket)."""
    market = Market("XBT/USD", depth, seed=7)
    started = time.perf_counter()
    for _ in range(count):
        market.update_frame(336)
    return count / (time.perf_counter() - started)


def socket_rate(seconds: float, depth: int, pairs: int, rate: float, verify: bool) -> None:
    config = SimulatorConfig(pairs=PAIRS[:pairs], rate=rate, record=False)
    with Simulator(config) as sim:
        ws = websocket.create_connection(sim.url, timeout=5)
        ws.recv()
        request = {
            "event": "subscribe",
            "pair": list(PAIRS[:pairs]),
            "subscription": {"name": "book", "depth": depth},
        }
        ws.send(orjson.dumps(request).decode())
        feed = BookFeed()
        updates = failed = 0
        nbytes = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            text = ws.recv()
            nbytes += len(text)
            if verify:
                outcome = feed.on_message(orjson.loads(text), 0)
                updates += outcome in (Outcome.UPDATE_OK, Outcome.CHECKSUM_FAILED)
                failed += outcome is Outcome.CHECKSUM_FAILED
            elif text[0] == "[" and '"c":"' in text:
                updates += 1
            if updates % 1000 == 0 and time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - started
        ws.close(timeout=0.5)
        ws.shutdown()
    checked = f", {failed} checksum failures" if verify else ""
    print(
        f"socket: {updates / elapsed:,.0f} updates/s to one client "
        f"(depth {depth}, {pairs} pair(s), rate {rate if rate else 'max'}, "
        f"{nbytes / elapsed / 1e6:.1f} MB/s{checked})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.0, help="0: as fast as possible")
    parser.add_argument("--verify", action="store_true", help="check every checksum client-side")
    args = parser.parse_args()
    print(f"market: {generation_rate(args.depth):,.0f} updates/s generated (depth {args.depth})")
    socket_rate(args.seconds, args.depth, args.pairs, args.rate, args.verify)


if __name__ == "__main__":
    main()
