"""The recorder against the real simulator on 127.0.0.1: every frame kept, every fault survived."""

from __future__ import annotations

from pathlib import Path

import pytest
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
from kbook.segment import PARTIAL_SUFFIX
from kbook.sim import Simulator, SimulatorConfig
from kbook.verify import verify_paths

PAIRS = ("XBT/USD", "ETH/USD")


@pytest.fixture
def sim() -> Simulator:
    with Simulator(SimulatorConfig(api=Api.V1, pairs=PAIRS, rate=200.0, seed=7)) as simulator:
        yield simulator


def assert_clean_verify(out: Path, failed: int = 0) -> None:
    report = verify_paths([out / "raw"])
    assert report.problems == []
    assert report.checksums_failed == failed
    assert report.checksums_ok >= 50


def assert_all_recorded(output: Output, sim: Simulator, lost_on_last: int = 0) -> dict[int, int]:
    """Every connection but the last recorded in full; the last loses at most what came after stop."""
    lost = match_connections(output.texts, sim.sent)
    *earlier, last = sorted(lost)
    assert {conn: lost[conn] for conn in earlier} == dict.fromkeys(earlier, 0)
    assert lost[last] <= lost_on_last
    return lost


def test_every_frame_kept_in_order_across_rotations(sim: Simulator, tmp_path: Path) -> None:
    config = fast_config(
        sim, tmp_path, ("BTC/USD", "ETH/USD"), depth=25, rotate_ns=SECOND, max_segment_bytes=6000
    )
    with Background(config) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 900, timeout=12)
        sent_at_stop = len(sim.sent)
        summary = run.finish()
    output = read_output(tmp_path)
    assert len(output.texts) >= sent_at_stop
    assert match_connections(output.texts, sim.sent) == {1: len(sim.sent) - len(output.texts)}
    assert sorted(output.frames) == list(range(len(output.frames)))
    assert not list(tmp_path.rglob("*" + PARTIAL_SUFFIX))
    for name, wire in (("BTC-USD", "XBT/USD"), ("ETH-USD", "ETH/USD")):
        files = output.files_of(name)
        assert len(files) >= 3
        for path in files:
            lines = output.lines[path]
            pairs = {r["msg"][-1] for r in lines if isinstance(r.get("msg"), list)}
            assert pairs <= {wire}
            assert lines[-1]["meta"]["type"] == "segment_end"
        for path in output.opened_with_a_book(name):
            head = output.lines[path][0]["meta"]
            assert head["type"] == "checkpoint"
            assert head["pair"] == wire
            assert head["channel"] == "book-25"
        first = output.lines[files[0]][0]["meta"]
        assert first["type"] == "session_start"
        assert first["api"] == "v1"
    assert summary.checksums_failed == 0
    assert set(summary.segments) == set(output.files)
    assert_clean_verify(tmp_path)


def test_dropped_connection_is_survived(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.drop_after(40)
        sim.wait_for(lambda s: updates_on(s, 2) >= 200, timeout=10)
        summary = run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    assert summary.reconnects == 1
    assert len(output.metas("disconnect", output.files_of("ETH-USD")[0])) == 2
    assert sim.count("snapshot", 2) == 2
    assert_clean_verify(tmp_path)


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


def test_wrong_checksum_resubscribes_for_a_fresh_snapshot(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.bad_checksum_at(10)
        sim.wait_for(lambda s: s.count("snapshot", 1) == 3, timeout=10)
        sim.wait_for(lambda s: updates_on(s, 1) >= 400, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    [mismatch] = output.metas("checksum_mismatch")
    [resubscribe] = output.metas("resubscribe")
    assert resubscribe["request"]["event"] == "unsubscribe"
    assert resubscribe["request"]["pair"] == [mismatch["pair"]]
    assert mismatch["expected"] != mismatch["computed"]
    assert len(output.metas("connect", output.files_of("ETH-USD")[0])) == 1
    assert_clean_verify(tmp_path, failed=1)


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


def test_maintenance_waits_before_reconnecting(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, PAIRS)) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
        sim.faults.maintenance_after(30)
        sim.wait_for(lambda s: updates_on(s, 2) >= 200, timeout=10)
        run.finish()
    output = read_output(tmp_path)
    assert_all_recorded(output, sim, lost_on_last=len(sim.sent))
    first = output.files_of("ETH-USD")[0]
    [gone, _] = output.metas("disconnect", first)
    assert "1001" in gone["reason"]
    [_, again] = output.metas("connect", first)
    assert again["recv_ns"] - gone["recv_ns"] >= 600_000_000
    assert any('"status":"maintenance"' in text for text in output.texts)
    assert_clean_verify(tmp_path)


def test_rate_limited_subscribe_is_retried(sim: Simulator, tmp_path: Path) -> None:
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
    assert sim.connections == 1
    assert_clean_verify(tmp_path)


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


def test_unknown_pair_is_reported_and_others_keep_recording(sim: Simulator, tmp_path: Path) -> None:
    with Background(fast_config(sim, tmp_path, ("ETH/USD", "FOO/BAR"))) as run:
        sim.wait_for(lambda s: updates_on(s, 1) >= 100, timeout=10)
        summary = run.finish()
    assert summary.failed == {"FOO/BAR": "Currency pair not supported FOO/BAR"}
    assert not (tmp_path / "raw" / "FOO-BAR").exists()
    output = read_output(tmp_path)
    [error] = output.metas("subscribe_error")
    assert error["pair"] == "FOO/BAR"
    assert "kbook: warning: FOO/BAR: cannot subscribe: Currency pair not supported" in (
        run.stderr.getvalue()
    )
    assert_clean_verify(tmp_path)


def test_no_pair_subscribed_is_an_error(sim: Simulator, tmp_path: Path) -> None:
    run = Background(fast_config(sim, tmp_path, ("FOO/BAR", "BAZ/QUX")))
    with run, pytest.raises(RecordError, match="no pair could be subscribed"):
        run.join()
    assert not (tmp_path / "raw").exists()


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


def test_pings_keep_an_idle_connection_open(tmp_path: Path) -> None:
    config = SimulatorConfig(api=Api.V1, pairs=("ETH/USD",), rate=20.0, idle_timeout=1.0)
    with Simulator(config) as sim:
        fast = fast_config(sim, tmp_path, ("ETH/USD",), ping_interval_ns=300_000_000)
        with Background(fast) as run:
            sim.wait_for(lambda s: s.count("pong") >= 5, timeout=10)
            run.finish()
        assert sim.connections == 1
        assert_all_recorded(read_output(tmp_path), sim, lost_on_last=len(sim.sent))
