"""``kbook watch --api v2``: live against the simulator's v2, and ``--from`` v2 recordings (alone,
and beside v1 recordings of the same pair, which are never mixed into its book)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from apis import V1, V2
from record_support import SECOND, Background, fast_config, updates_on, wait_until
from watch_support import Screen, best_prices

from kbook.api import Api
from kbook.book import Book
from kbook.segment import find_segments
from kbook.sim import Simulator, SimulatorConfig
from kbook.v2 import RecordReader, V2BookFeed, segment_api
from kbook.watch import Watcher
from kbook.watch.sources import ReplaySource

KBOOK = [sys.executable, "-m", "kbook"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KBOOK_DEBUG", None)
    return env


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimulatorConfig(api="v2", pairs=("XBT/USD", "ETH/USD"), rate=200.0, seed=3)
    with Simulator(config) as simulator:
        yield simulator


# -- live -----------------------------------------------------------------------------------------


# -- replay ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    out: Path
    v1: list[Path]
    v2: list[Path]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """BTC/USD recorded from v1 (echoed as BTC/USD), then from v2 with a drop and rotations,
    into one output folder."""
    out = tmp_path_factory.mktemp("watch-v2")
    v1 = SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, btc="echo-btc", seed=8)
    with Simulator(v1) as sim, Background(fast_config(sim, out, ("BTC/USD",))) as run:
        wait_until(lambda: updates_on(sim, 1) >= 50, what="v1 updates")
        run.finish()
    v2 = SimulatorConfig(api="v2", pairs=("XBT/USD",), rate=200.0, seed=9)
    with Simulator(v2) as sim:
        config = fast_config(sim, out, ("BTC/USD",), api="v2", rotate_ns=SECOND)
        with Background(config) as run:
            wait_until(lambda: updates_on(sim, 1) >= 50, what="v2 updates")
            sim.faults.drop_after(5)
            wait_until(lambda: updates_on(sim, 2) >= 50, what="updates after the reconnect")
            wait_until(lambda: len(list(out.rglob("*.jsonl.zst"))) >= 3, what="a rotation")
            run.finish()
    files = find_segments([out / "raw"])
    return Recorded(
        out,
        [path for path in files if segment_api(path) == "v1"],
        [path for path in files if segment_api(path) == "v2"],
    )


def final_book(files: list[Path]) -> Book:
    feed = V2BookFeed()
    for path in files:
        for record in RecordReader(path):
            if "msg" in record:
                feed.on_message(record["msg"], record["recv_ns"])
            elif "meta" in record:
                feed.on_meta(record["meta"], record["recv_ns"])
    return feed.books[("BTC/USD", "book-10")]


def watch_from(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KBOOK, "watch", *args, "--speed", "0"],
        capture_output=True,
        text=True,
        timeout=20,
        env=_env(),
    )


@pytest.mark.slow
def test_replay_of_a_v2_recording_ends_with_its_book(recorded: Recorded) -> None:
    assert len(recorded.v1) == 1
    assert len(recorded.v2) >= 2
    done = watch_from("BTC/USD", "--api", "v2", "--from", str(recorded.out))
    assert done.returncode == 0, done.stderr
    last = [block for block in done.stdout.split("\n\n") if block.strip()][-1]
    book = final_book(recorded.v2)
    assert best_prices(last) == (book.top_bids(1)[0][0], book.top_asks(1)[0][0])
    assert "  BTC/USD  book-10  replay " in last.splitlines()[0]
    assert "checksum ok | " in last
    assert V1.price.findall(done.stdout) == []
    [warning, summary] = done.stderr.splitlines()
    assert warning == (
        f"kbook: warning: {recorded.v1[0]}: skipped: Kraken WebSocket v1, not v2 (--api v1)"
    )
    assert re.fullmatch(
        r"kbook watch: finished: \d+ book frames of BTC/USD, checksums ok \d+ failed 0, "
        r"reconnects 1",
        summary,
    )


@pytest.mark.slow
def test_replay_without_api_shows_the_first_recorded_api_only(recorded: Recorded) -> None:
    done = watch_from("BTC/USD", "--from", str(recorded.out))
    assert done.returncode == 0, done.stderr
    assert V2.price.findall(done.stdout) == []  # the v1 recording came first: v1 prices only
    assert len(V1.price.findall(done.stdout)) >= 20
    *warnings, summary = done.stderr.splitlines()
    assert warnings == [
        f"kbook: warning: {path}: skipped: Kraken WebSocket v2, not v1 (--api v2)"
        for path in recorded.v2
    ]
    assert "failed 0, reconnects 0" in summary


def test_a_later_v2_segment_alone_starts_from_its_checkpoint(recorded: Recorded) -> None:
    screen = Screen()
    watcher = Watcher("BTC/USD", screen, "replay", api="v2")
    ReplaySource(recorded.v2[-1:], speed=math.inf).run(watcher)
    first_with_book = next(status for status, _ in screen.shown if status.channel)
    assert first_with_book.checksum == "ok"
    assert first_with_book.channel == "book-10"
    assert screen.last.checksums_failed == 0


def test_missing_v2_book_names_what_the_recording_holds(recorded: Recorded) -> None:
    done = watch_from("BTC/USD", "--api", "v2", "--depth", "100", "--from", str(recorded.out))
    assert done.returncode == 2
    assert done.stderr == (
        "kbook: error: the recording holds no BTC/USD book-100 (v2) "
        "(it holds: BTC/USD book-10, BTC/USD book-10 (v2))\n"
    )


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["BTC/USD", "--api", "v3"], "--api 'v3' is not one of v1, v2", 2),
    ],
)
def test_bad_v2_input_is_one_line_and_non_zero(
    sim: Simulator, args: list[str], message: str, code: int
) -> None:
    done = subprocess.run(
        [*KBOOK, "watch", *args, "--url", sim.url],
        capture_output=True,
        text=True,
        timeout=15,
        env=_env(),
    )
    assert done.returncode == code
    assert done.stderr.startswith(f"kbook: error: {message}")
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""
