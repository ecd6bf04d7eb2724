"""``kbook watch`` in-process: the Watcher fed by the recorder's connection handling against the real
simulator (once per API where both behave alike), and by replayed segments; every state it shows
goes through the plain-text view. What only v2 recordings show is in test_watch_v2."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from apis import ApiCase
from record_support import SECOND, Background, fast_config, updates_on, wait_until
from watch_support import Screen, best_prices, wait_for, watching

from kbook.api import Api
from kbook.feed import BookFeed
from kbook.segment import SegmentReader, find_segments
from kbook.sim import Simulator, SimulatorConfig
from kbook.watch import Watcher
from kbook.watch.sources import Pacer, ReplaySource
from kbook.watch.view import render_text


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(
        SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, seed=3)
    ) as simulator:
        yield simulator


@pytest.fixture
def any_sim(case: ApiCase) -> Iterator[Simulator]:
    """A simulator of each API in turn; the watch follows its URL to the API."""
    with Simulator(case.sim_config(pairs=("XBT/USD", "ETH/USD"), rate=200.0, seed=3)) as simulator:
        yield simulator


def test_live_view_matches_the_simulators_book(case: ApiCase, any_sim: Simulator) -> None:
    sim = any_sim
    with watching(sim.url) as screen:
        wait_for(screen, lambda s: s.checksums_ok >= 50, "50 good checksums")
        sim.pause()
        sent = sim.count()
        wait_until(lambda: screen.last.frames >= sim.count("snapshot") + sim.count("update"))
        asks, bids = sim.book(case.btc_wire)
        status, text = screen.shown[-1]
    assert sim.count() >= sent
    assert status.checksum == "ok"
    assert status.checksums_failed == 0
    assert status.connection == "connected"
    assert status.channel == "book-10"
    assert best_prices(text) == (bids[0][0], asks[0][0])
    mid = (Decimal(bids[0][0]) + Decimal(asks[0][0])) / 2  # exact, as the view computes it
    assert f"mid {mid:f}" in text
    # Prices exactly as this API prints them (v1: 5 decimals, v2: 1), never the other's way.
    assert len(case.price.findall(text)) >= 20
    assert case.other.price.findall(text) == []


def test_checksum_failure_shows_failed_or_resyncing_then_ok_again(
    case: ApiCase, any_sim: Simulator
) -> None:
    sim = any_sim
    # A long resync interval makes the second failure wait for its resync: "failed" is then
    # on screen until the paced unsubscribe goes out, as the recorder paces it.
    with watching(sim.url, resubscribe_interval_ns=SECOND) as screen:
        wait_for(screen, lambda s: s.checksums_ok >= 20, "20 good checksums")
        sim.faults.bad_checksum_at(3)
        first = wait_for(screen, lambda s: s.checksums_failed == 1, "the first failure")
        back = wait_for(screen, lambda s: s.checksum == "ok", "recovery", start=first)
        assert sim.count("snapshot") == 2  # the fresh snapshot of the resync
        sim.faults.bad_checksum_at(3)
        second = wait_for(screen, lambda s: s.checksums_failed == 2, "the second failure")
        wait_for(screen, lambda s: s.checksum == "ok", "recovery", start=second)
    # The first failure is resynced at once, the second waits for the pacing interval.
    assert set(screen.states_since(first)[: back - first]) == {"resyncing"}
    states = screen.states_since(second)
    assert states[0] == "failed"
    assert states.index("failed") < states.index("resyncing") < states.index("ok")
    failed_view = next(
        text for status, text in screen.shown[second:] if status.checksum == "failed"
    )
    assert "checksum failed | " in failed_view
    assert "failed 2 (last " in failed_view
    assert screen.last.reconnects == 0


def test_reconnects_after_a_drop_and_shows_the_new_book(case: ApiCase, any_sim: Simulator) -> None:
    sim = any_sim
    with watching(sim.url) as screen:
        wait_for(screen, lambda s: s.checksums_ok >= 20, "20 good checksums")
        sim.faults.drop_after(5)
        wait_for(screen, lambda s: s.reconnects == 1 and s.checksum == "ok", "a reconnect")
    assert sim.connections == 2
    assert any(status.note and status.note.startswith("disconnected") for status, _ in screen.shown)


def test_btc_usd_refused_is_retried_as_xbt_usd() -> None:
    with (
        Simulator(SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, btc="reject")) as sim,
        watching(sim.url, pair="BTC/USD") as screen,
    ):
        wait_for(screen, lambda s: s.checksums_ok >= 5, "the XBT/USD book under BTC/USD")
    assert screen.last.pair == "BTC/USD"
    notes = {status.note for status, _ in screen.shown}
    assert any(note and "retrying as XBT/USD" in note for note in notes)


def test_replay_ends_with_the_book_of_the_recording(capture_segment: Callable[[str], Path]) -> None:
    segment = capture_segment("orderbook-v1.json")
    screen = Screen(interval_ns=10**12)  # only the closing view
    watcher = Watcher("BTC/USD", screen, "replay")
    ReplaySource([segment], speed=math.inf).run(watcher)
    watcher.tick(0, force=True)
    expected = BookFeed()
    for record in SegmentReader(segment):
        expected.on_message(record["msg"], record["recv_ns"])
    book = expected.books[("XBT/USD", "book-10")]
    status, text = screen.shown[-1]
    assert (status.checksums_ok, status.checksums_failed, status.frames) == (979, 0, 980)
    assert status.checksum == "ok"
    assert status.connection.startswith("replay finished")
    assert text == render_text(book, status, 10)


def test_replay_of_recorder_segments_follows_checkpoints_and_reconnects(
    sim: Simulator, tmp_path: Path
) -> None:
    config = fast_config(sim, tmp_path, ("XBT/USD",), rotate_ns=SECOND)
    with Background(config) as run:
        wait_until(lambda: updates_on(sim, 1) >= 50, what="updates on the first connection")
        sim.faults.drop_after(5)
        wait_until(lambda: updates_on(sim, 2) >= 50, what="updates after the reconnect")
        wait_until(lambda: len(list(tmp_path.rglob("*.jsonl.zst"))) >= 2, what="a rotation")
        run.finish()
    files = find_segments([tmp_path / "raw"])
    whole = Screen(interval_ns=10**12)
    watcher = Watcher("BTC/USD", whole, "replay")
    ReplaySource(files, speed=math.inf).run(watcher)
    watcher.tick(0, force=True)
    assert whole.last.reconnects == 1
    assert whole.last.checksum == "ok"
    assert whole.last.checksums_failed == 0
    assert whole.last.note is not None
    assert whole.last.note.startswith("recorder disconnected: ")
    # A later segment alone starts from its checkpoint: a valid book before any snapshot.
    later = Screen()
    ReplaySource(files[-1:], speed=math.inf).run(Watcher("XBT/USD", later, "replay"))
    first_with_book = next(status for status, _ in later.shown if status.channel)
    assert first_with_book.checksum == "ok"


def test_pacer_keeps_recorded_pace_and_shortens_outages() -> None:
    pacer = Pacer(speed=2.0, max_gap_ns=5 * SECOND)
    assert pacer.delay_ns(100 * SECOND, now_mono=0) == 0
    assert pacer.delay_ns(101 * SECOND, now_mono=0) == SECOND // 2
    assert pacer.recorded_now(now_mono=SECOND // 4) == 100 * SECOND + SECOND // 2
    # An hour without lines (the recorder was down) is waited as 5 s, at 2x: 2.5 s.
    assert pacer.delay_ns(3701 * SECOND, now_mono=SECOND // 2) == 5 * SECOND // 2
    assert Pacer(speed=math.inf).delay_ns(5, now_mono=0) == 0
