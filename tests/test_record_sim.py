"""The recorder against the real simulator on 127.0.0.1: every frame kept, every fault survived.

Scenarios that hold for both of Kraken's APIs run once per API (``case``, ``apis.CASES``); the
recorder follows the simulator's URL to its API. The v2-only pure parts are in test_record_v2."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from apis import ApiCase
from record_support import (
    SECOND,
    Background,
    Output,
    fast_config,
    match_connections,
    read_output,
    updates_on,
)

from kbook.api import Api
from kbook.errors import RecordError
from kbook.pairs import common_name
from kbook.segment import PARTIAL_SUFFIX
from kbook.sim import Simulator, SimulatorConfig
from kbook.v2 import segment_api
from kbook.verify import verify_paths

PAIRS = ("XBT/USD", "ETH/USD")
LEVEL_TEXT = re.compile(r"\d+\.\d+")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """The v1 simulator of the v1-only scenarios (v1's BTC answer modes, ...)."""
    with Simulator(SimulatorConfig(api=Api.V1, pairs=PAIRS, rate=200.0, seed=7)) as simulator:
        yield simulator


@pytest.fixture
def any_sim(case: ApiCase) -> Iterator[Simulator]:
    """A simulator of each API in turn; the recorder follows its URL to the API."""
    with Simulator(case.sim_config(pairs=PAIRS, rate=200.0, seed=7)) as simulator:
        yield simulator


def assert_clean_verify(out: Path, failed: int = 0, api: Api = Api.V1) -> None:
    report = verify_paths([out / "raw"])
    assert report.problems == []
    assert report.checksums_failed == failed
    assert report.checksums_ok >= 50
    assert set(report.apis.values()) == {api}


def assert_all_recorded(output: Output, sim: Simulator, lost_on_last: int = 0) -> dict[int, int]:
    """Every connection but the last recorded in full; the last loses at most what came after stop."""
    lost = match_connections(output.texts, sim.sent)
    *earlier, last = sorted(lost)
    assert {conn: lost[conn] for conn in earlier} == dict.fromkeys(earlier, 0)
    assert lost[last] <= lost_on_last
    return lost


@pytest.mark.slow
def test_stalled_connection_is_dropped_and_replaced(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.stall_after(30)
        sim.wait_for(lambda s: updates_on(s, 2) >= 200, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    reasons = [m["reason"] for m in output.metas("disconnect", output.files_of("BTC-USD")[0])]
    assert reasons[0].startswith("stalled: no frame for")
    assert_clean_verify(tmp_path)


@pytest.mark.slow
def test_malformed_update_resubscribes_for_a_fresh_snapshot(sim: Simulator, tmp_path: Path) -> None:
    """A book frame that cannot be applied voids the book: the pair is resynced at once, not left
    void until the next reconnect."""
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.malformed_after(5)
        sim.wait_for(lambda s: s.count("snapshot", 1) == 3, timeout=10)
        sim.wait_for(lambda s: updates_on(s, 1) >= 400, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    [malformed] = output.metas("malformed_frame")
    [resubscribe] = output.metas("resubscribe")
    assert resubscribe["request"]["event"] == "unsubscribe"
    assert resubscribe["request"]["pair"] == [malformed["pair"]]
    assert sim.connections == 1
    report = verify_paths([tmp_path / "raw"])
    assert report.checksums_failed == 0
    assert report.feed.malformed_frames == 1
    assert sum(s.snapshots for s in report.pairs.values()) == 3


def test_refused_reconnects_are_retried(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.refuse_connections(count=5)
        sim.faults.drop_after(30)
        sim.wait_for(lambda s: updates_on(s, 2) >= 200, timeout=10)
        summary = run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    assert sim.refused == 5
    assert summary.reconnects == 1
    assert_clean_verify(tmp_path)


def test_non_json_frame_is_kept_raw(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.non_json_after(5)
        sim.wait_for(lambda s: s.count("raw") == 1 and updates_on(s, 1) >= 100, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    raw = [r for p in output.files for r in output.lines[p] if "raw" in r]
    assert len(raw) == 2  # one per pair's stream: it names no pair
    assert_clean_verify(tmp_path)


@pytest.mark.parametrize("mode", ["echo-xbt", "echo-btc", "reject"])
def test_btc_usd_in_every_answer_mode(mode: str, tmp_path: Path) -> None:
    with Simulator(SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, btc=mode)) as sim:
        with Background(fast_config(sim, tmp_path, ("BTC/USD",), depth=100)) as run:
            sim.wait_for(lambda s: updates_on(s, 1) >= 200, timeout=10)
            summary = run.finish()
        output = read_output(tmp_path)
        assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    assert summary.subscribed == ("BTC/USD",)
    assert all("/raw/BTC-USD/" in path.as_posix() for path in output.files)
    wire = "BTC/USD" if mode == "echo-btc" else "XBT/USD"
    book_frames = [text for text in output.texts if text.startswith("[")]
    assert len(book_frames) >= 200
    assert all(text.endswith(f'"book-100","{wire}"]') for text in book_frames)
    aliases = output.metas("alias")
    if mode == "reject":
        assert [(m["tried"], m["alias"]) for m in aliases] == [("BTC/USD", "XBT/USD")]
    else:
        assert aliases == []
    assert_clean_verify(tmp_path)


def test_duration_ends_the_run_cleanly(sim: Simulator, tmp_path: Path) -> None:
    run = Background(fast_config(sim, tmp_path, PAIRS, duration_ns=SECOND))
    with run:
        summary = run.join()
    assert summary.stop_reason == "duration"
    assert 0.9 * SECOND <= summary.ended_ns - summary.started_ns <= 5 * SECOND
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
    assert_all_recorded(read_output(tmp_path), sim, lost_on_last=len(sim.sent))


def test_status_line_is_plain_text(sim: Simulator, tmp_path: Path) -> None:
    config = fast_config(sim, tmp_path, PAIRS, quiet=False, status_interval_ns=200_000_000)
    with Background(config) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 200, timeout=10)
        run.finish()
    lines = [line for line in run.stderr.getvalue().splitlines() if "frames/s" in line]
    assert lines
    assert "\x1b" not in run.stderr.getvalue()
    assert lines[-1].split(" ", 1)[0].endswith("Z")
    assert "checksums ok" in lines[-1]
    assert "reconnects 0" in lines[-1]


# -- both APIs ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_frame_kept_in_order_across_rotations(
    case: ApiCase, any_sim: Simulator, tmp_path: Path
) -> None:
    sim = any_sim
    config = fast_config(
        sim, tmp_path, ("BTC/USD", "ETH/USD"), depth=25, rotate_ns=SECOND, max_segment_bytes=6000
    )
    with Background(config) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 900, timeout=12)
        # Paused, every frame counted has left the simulator: on the socket, the recorder must
        # keep it (``sent`` also counts a frame the simulator is still handing to the socket).
        sim.pause()
        sent_at_stop = len(sim.sent)
        summary = run.finish()
    output = read_output(tmp_path)
    assert len(output.texts) >= sent_at_stop
    assert match_connections(output.texts, sim.sent) == {1: len(sim.sent) - len(output.texts)}
    assert sorted(output.frames) == list(range(len(output.frames)))
    assert output.texts[0].startswith(case.status_start)
    assert output.texts[1].startswith(case.answer_start)
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
    for name, wire in (("BTC-USD", case.btc_wire), ("ETH-USD", "ETH/USD")):
        files = output.files_of(name)
        assert len(files) >= 3
        for path in files:
            lines = output.lines[path]
            assert case.book_pairs(lines) <= {wire}
            assert lines[-1]["meta"]["type"] == "segment_end"
            assert segment_api(path) == case.api
        first = output.lines[files[0]][0]["meta"]
        assert first["type"] == "session_start"
        assert first["api"] == case.api
        assert first["config"]["api"] == case.api
        for path in output.opened_with_a_book(name):
            head = output.lines[path][0]["meta"]
            assert head["type"] == "checkpoint"
            assert (head["api"], head["pair"], head["channel"]) == (case.api, wire, "book-25")
            levels = [text for level in head["asks"] + head["bids"] for text in level]
            assert all(type(t) is str and LEVEL_TEXT.fullmatch(t) for t in levels), levels
            # A later segment alone: its checkpoint's exact texts verify what follows.
            alone = verify_paths([path])
            assert alone.checksums_failed == 0
            assert alone.pairs[common_name(wire)].checkpoints >= 1  # verify says BTC/USD
    assert summary.checksums_failed == 0
    assert set(summary.segments) == set(output.files)
    assert_clean_verify(tmp_path, api=case.api)


def test_dropped_connection_is_survived(case: ApiCase, any_sim: Simulator, tmp_path: Path) -> None:
    sim = any_sim
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.drop_after(40)
        sim.wait_for(lambda s: updates_on(s, 2) >= 200, timeout=10)
        summary = run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    assert summary.reconnects == 1
    assert len(output.metas("disconnect", output.files_of("ETH-USD")[0])) == 2
    assert sim.count("snapshot", 1) == sim.count("snapshot", 2) == 2
    assert_clean_verify(tmp_path, api=case.api)


def test_wrong_checksum_resubscribes_for_a_fresh_snapshot(
    case: ApiCase, any_sim: Simulator, tmp_path: Path
) -> None:
    sim = any_sim
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.bad_checksum_at(10)
        sim.wait_for(lambda s: s.count("snapshot", 1) == 3, timeout=10)
        sim.wait_for(lambda s: updates_on(s, 1) >= 400, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    [mismatch] = output.metas("checksum_mismatch")
    assert mismatch["pair"] in (case.btc_wire, "ETH/USD")
    assert mismatch["channel"] == "book-10"
    assert isinstance(mismatch["expected"], int)
    assert mismatch["expected"] != mismatch["computed"]
    [resubscribe] = output.metas("resubscribe")
    assert case.request_method(resubscribe["request"]) == "unsubscribe"
    assert case.request_pairs(resubscribe["request"]) == [mismatch["pair"]]
    # The fresh snapshot after the resync is in the resynced pair's stream.
    name = "ETH-USD" if mismatch["pair"] == "ETH/USD" else "BTC-USD"
    texts = [
        output.frames[r["seq"]]
        for p in output.files_of(name)
        for r in output.lines[p]
        if "msg" in r
    ]
    assert sum(case.snapshot_mark in text for text in texts) == 2
    assert len(output.metas("connect", output.files_of("ETH-USD")[0])) == 1
    assert_clean_verify(tmp_path, failed=1, api=case.api)


def test_maintenance_waits_before_reconnecting(
    case: ApiCase, any_sim: Simulator, tmp_path: Path
) -> None:
    sim = any_sim
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.maintenance_after(30)
        sim.wait_for(lambda s: updates_on(s, 2) >= 200, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    for name in ("ETH-USD", "BTC-USD"):
        first = output.files_of(name)[0]
        [gone, _] = output.metas("disconnect", first)
        assert "1001" in gone["reason"]
        [_, again] = output.metas("connect", first)
        assert again["recv_ns"] - gone["recv_ns"] >= 600_000_000
    assert any(case.maintenance in text for text in output.texts)
    assert_clean_verify(tmp_path, api=case.api)


def test_rate_limited_subscribe_is_retried(
    case: ApiCase, any_sim: Simulator, tmp_path: Path
) -> None:
    sim = any_sim
    sim.faults.rate_limit_next_subscribe()
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 200, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    assert any("Exceeded msg rate" in text for text in output.texts)
    subscribes = output.metas("subscribe", output.files_of("ETH-USD")[0])
    assert len(subscribes) == 2
    assert subscribes[1]["recv_ns"] - subscribes[0]["recv_ns"] >= 300_000_000
    # The same request again, in full: a rate limit refuses the request, not a pair.
    [first, again] = (case.request_pairs(m["request"]) for m in subscribes)
    assert first == again
    assert len(first) == 2
    assert output.metas("alias") == []
    assert sim.connections == 1
    assert_clean_verify(tmp_path, api=case.api)


def test_unknown_pair_is_reported_and_others_keep_recording(
    case: ApiCase, any_sim: Simulator, tmp_path: Path
) -> None:
    sim = any_sim
    with Background(fast_config(sim, tmp_path, ("XBT/USD", "FOO/BAR"))) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 100, timeout=10)
        summary = run.finish()
    assert sim.connections == 1
    assert summary.subscribed == ("XBT/USD",)
    assert summary.failed == {"FOO/BAR": "Currency pair not supported FOO/BAR"}
    assert not (tmp_path / "raw" / "FOO-BAR").exists()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    [error] = output.metas("subscribe_error")
    assert error["pair"] == "FOO/BAR"
    assert "kbook: warning: FOO/BAR: cannot subscribe: Currency pair not supported" in (
        run.stderr.getvalue()
    )
    assert_clean_verify(tmp_path, api=case.api)


def test_no_pair_subscribed_is_an_error(case: ApiCase, any_sim: Simulator, tmp_path: Path) -> None:
    run = Background(fast_config(any_sim, tmp_path, ("FOO/BAR", "BAZ/QUX")))
    reason = r"no pair could be subscribed \(.*FOO/BAR: Currency pair not supported FOO/BAR"
    with run, pytest.raises(RecordError, match=reason):
        run.join()
    assert not (tmp_path / "raw").exists()


def test_pings_and_heartbeats_keep_a_quiet_connection_open(case: ApiCase, tmp_path: Path) -> None:
    # Fewer updates than the stall timeout needs: heartbeats must count as traffic, and the
    # idle timeout closes the connection unless pings are sent.
    config = case.sim_config(pairs=("ETH/USD",), rate=0.2, idle_timeout=1.0, heartbeat_interval=0.2)
    with Simulator(config) as sim:
        fast = fast_config(sim, tmp_path, ("ETH/USD",), ping_interval_ns=300_000_000)
        with Background(fast) as run:
            sim.wait_for(lambda s: s.count("pong") >= 6, timeout=10)
            summary = run.finish()
        assert sim.connections == 1
        assert summary.reconnects == 0
        assert_all_recorded(read_output(tmp_path), sim, lost_on_last=len(sim.sent))
