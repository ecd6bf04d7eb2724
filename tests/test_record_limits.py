"""The recorder's smaller promises: many pairs and overlapping pair sets under one lock folder,
no silent empty run, a deleted ``.partial``, a tiny ``--max-segment-mb``, lag."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hostile_support import HostileServer, Peer
from record_support import (
    FAST,
    Background,
    fast_config,
    match_connections,
    read_output,
    wait_until,
)

from kbook.api import Api
from kbook.errors import RecordError
from kbook.segment import PARTIAL_SUFFIX
from kbook.sim import Simulator, SimulatorConfig
from kbook.verify import verify_paths
from recorder import RecordConfig
from recorder.lock import OutputLock, lock_path

SECOND = 1_000_000_000
MANY = tuple(f"C{index:03d}/USD" for index in range(300))


def test_the_lock_of_300_pairs_has_a_short_name(tmp_path: Path) -> None:
    path = lock_path(tmp_path, MANY, Api.V2)
    assert len(path.name) < 64
    assert path == lock_path(tmp_path, tuple(reversed(MANY)), Api.V2)
    with OutputLock(tmp_path, MANY, Api.V2):
        with pytest.raises(RecordError, match="already recording these pairs"):
            OutputLock(tmp_path, MANY, Api.V2).acquire()
        OutputLock(tmp_path, MANY, Api.V1).acquire().release()  # the other API's feed


def test_overlapping_pair_sets_are_refused(tmp_path: Path) -> None:
    with OutputLock(tmp_path, ("BTC/USD", "ETH/USD"), Api.V1):
        with pytest.raises(RecordError, match="ETH-USD, one of these pairs"):
            OutputLock(tmp_path, ("ETH/USD", "SOL/USD"), Api.V1).acquire()
        with pytest.raises(RecordError, match="already recording"):
            OutputLock(tmp_path, ("ETH/USD",), Api.V1).acquire()
        # the refused run left no lock of its own behind
        OutputLock(tmp_path, ("SOL/USD", "XDG/USD"), Api.V1).acquire().release()
    OutputLock(tmp_path, ("ETH/USD", "SOL/USD"), Api.V1).acquire().release()


def test_a_v2_recorder_at_a_v1_server_exits_1_instead_of_an_empty_day(tmp_path: Path) -> None:
    with Simulator(SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=50.0)) as sim:
        config = fast_config(
            sim, tmp_path, ("BTC/USD",), api=Api.V2, subscribe_deadline_ns=2 * SECOND
        )
        started = time.monotonic()
        with pytest.raises(RecordError, match="no pair was subscribed within 2 s") as error:
            Background(config).__enter__().join(timeout=15)
    assert "--api v2" in str(error.value)
    assert time.monotonic() - started < 10


def test_retries_count_connections_that_open_but_never_subscribe(tmp_path: Path) -> None:
    """A server that accepts, never answers the subscription, and hangs up after a while."""

    async def hang_up(peer: Peer) -> None:
        await asyncio.sleep(0.2)

    with HostileServer(hang_up, answer=False) as server:
        config = RecordConfig(
            pairs=("BTC/USD",),
            out=tmp_path,
            url=server.url,
            api=Api.V1,
            **{**FAST, "connect_retries": 3},
        )
        with pytest.raises(RecordError, match=r"no pair subscribed .*\(3 attempts\)"):
            Background(config).__enter__().join(timeout=15)
    assert server.connections == 3


def test_a_deleted_partial_is_noticed_at_the_next_flush(tmp_path: Path) -> None:
    config = SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, seed=3)
    with Simulator(config) as sim, Background(fast_config(sim, tmp_path, ("BTC/USD",))) as run:
        wait_until(lambda: sim.count("update", 1) >= 50, 10, "updates")
        [first] = list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
        first.unlink()
        wait_until(lambda: any(tmp_path.rglob("*" + PARTIAL_SUFFIX)), 5, "a new segment")
        seen = sim.count("update", 1)
        wait_until(lambda: sim.count("update", 1) >= seen + 50, 10, "more updates")
        # No update is in flight at the stop (only heartbeats may follow), so the tail bound
        # below measures the recorder, not how loaded the machine is.
        sim.pause()
        wait_until(lambda: run.recorder.frames >= sim.frames_sent, 10, "the recorder to catch up")
        run.finish()
    output = read_output(tmp_path)
    [lost] = output.metas("segment_lost")
    assert lost["path"] == str(first)
    assert "the open segment was deleted or replaced" in run.stderr.getvalue()
    # The new segment has every frame since the deleted file's last flush, and all that follow:
    # the recording is the end of what was sent, without a gap.
    texts = output.texts
    sent = [frame.text for frame in sim.sent]
    start = sent.index(texts[0])
    assert texts == sent[start : start + len(texts)]
    assert len(sent) - start - len(texts) <= 2  # only heartbeats sent after the stop
    assert verify_paths([tmp_path / "raw"]).problems == []


def test_a_tiny_size_limit_rotates_at_most_once_per_flush(tmp_path: Path) -> None:
    with Simulator(SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=300.0, seed=5)) as sim:
        config = fast_config(sim, tmp_path, ("BTC/USD",), api=Api.V1, max_segment_bytes=1)
        started = time.monotonic()
        with Background(config) as run:
            wait_until(lambda: sim.count("update", 1) >= 300, 10, "updates")
            summary = run.finish()
        seconds = time.monotonic() - started
    flushes = seconds / (config.flush_interval_ns / SECOND)
    assert summary.frames > 300
    assert 2 <= len(summary.segments) <= flushes + 3
    assert match_connections(read_output(tmp_path).texts, sim.sent)[1] <= 5


def test_pair_names_a_server_invents_get_no_book(tmp_path: Path) -> None:
    """2,000 snapshots of pairs nobody asked for: kept verbatim, no book built for them."""

    async def invent(peer: Peer) -> None:
        for index in range(2000):
            level = '["1.00000","1.00000000","1700000000.000000"]'
            book = f'{{"as":[{level}],"bs":[{level}]}}'
            await peer.send_text(f'[{index},{book},"book-10","Z{index:05d}/USD"]')
        await asyncio.Event().wait()

    with HostileServer(invent) as server:
        config = RecordConfig(pairs=("BTC/USD",), out=tmp_path, url=server.url, api=Api.V1, **FAST)
        with Background(config) as run:
            wait_until(lambda: run.recorder.frames >= len(server.sent) >= 2022, 15, "the frames")
            books = len(run.recorder.feed.books)
            run.finish()
    assert books == 0
    output = read_output(tmp_path)
    assert output.texts == server.sent
    [meta] = output.metas("unasked_pair")
    assert meta["pair"] == "Z00000/USD"


def test_a_price_with_a_million_decimals_resyncs_the_pair(tmp_path: Path) -> None:
    """One update whose price has 1 M decimals: the frame is kept verbatim, the book does not
    rescale to it (it would take 1.5 GB at depth 1000), the pair is resubscribed."""
    level = '["50000.10000","1.00000000","1700000000.000000"]'
    snapshot = f'[0,{{"as":[{level}],"bs":[["49999.10000","1.00000000","1700000000.0"]]}},'
    snapshot += '"book-10","XBT/USD"]'
    huge = "50001." + "1" * 1_000_000
    update = f'[0,{{"a":[["{huge}","1.00000000","1700000000.1"]],"c":"1"}},"book-10","XBT/USD"]'

    async def attack(peer: Peer) -> None:
        if peer.server.attacks == 1:
            await peer.send_text(snapshot)
            await peer.send_text(update)
        await asyncio.Event().wait()

    with HostileServer(attack) as server:
        config = RecordConfig(pairs=("BTC/USD",), out=tmp_path, url=server.url, api=Api.V1, **FAST)
        with Background(config) as run:
            wait_until(lambda: run.recorder.frames >= 24, 10, "the frames")
            sub = run.recorder.subs.subs["BTC/USD"]
            wait_until(lambda: sub.last_resync_ns is not None, 10, "the resubscribe")
            books = list(run.recorder.feed.books.values())
            run.finish()
    assert [book.scale for book in books] == [5]
    output = read_output(tmp_path)
    assert output.texts == server.sent
    [malformed] = output.metas("malformed_frame")
    assert malformed["pair"] == "XBT/USD"
    assert output.metas("resubscribe")
