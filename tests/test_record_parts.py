"""The recorder's pure parts: subscription state machine, backoff, segment streams, lock, config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kbook.errors import OutputError, RecordError, UsageError
from kbook.live.backoff import SECOND, Backoff
from kbook.live.subscriptions import State, Subscriptions, spellings
from kbook.segment import SegmentReader, is_json_text, segment_path
from recorder.config import RecordConfig
from recorder.lock import OutputLock, lock_path
from recorder.record import decode_frame
from recorder.segments import SegmentStream

T0 = 1_763_683_200 * SECOND  # 2025-11-21T00:00:00Z


# -- subscriptions ----------------------------------------------------------------------------


def status(pair: str, state: str, message: str | None = None) -> dict:
    msg = {"event": "subscriptionStatus", "pair": pair, "status": state}
    if message:
        msg["errorMessage"] = message
    return msg


def test_spellings_try_the_users_name_first() -> None:
    assert spellings("BTC/USD") == ("BTC/USD", "XBT/USD")
    assert spellings("XBT/USD") == ("XBT/USD", "BTC/USD")
    assert spellings("ETH/USD") == ("ETH/USD",)


def test_one_subscribe_for_every_pair() -> None:
    subs = Subscriptions(("BTC/USD", "ETH/USD"), 100)
    [action] = subs.on_connect(0)
    assert action.send is not None
    assert action.send["pair"] == ["BTC/USD", "ETH/USD"]
    assert action.send["subscription"] == {"name": "book", "depth": 100}
    assert action.meta == {"type": "subscribe", "request": action.send}


def test_echoed_alias_routes_to_the_users_pair() -> None:
    subs = Subscriptions(("BTC/USD",), 10)
    subs.on_connect(0)
    assert subs.on_control(status("XBT/USD", "subscribed"), 1) == []
    assert subs.subs["BTC/USD"].state is State.SUBSCRIBED
    assert subs.subs["BTC/USD"].wire == "XBT/USD"
    assert subs.pair_for("XBT/USD") == "BTC/USD"


def test_refused_pair_is_retried_under_its_alias_then_given_up() -> None:
    subs = Subscriptions(("BTC/USD",), 10)
    subs.on_connect(0)
    alias, retry = subs.on_control(status("BTC/USD", "error", "Currency pair not supported"), 1)
    assert alias.meta is not None
    assert alias.meta["type"] == "alias"
    assert alias.meta["alias"] == "XBT/USD"
    assert retry.send is not None
    assert retry.send["pair"] == ["XBT/USD"]
    [failed] = subs.on_control(status("XBT/USD", "error", "Currency pair not supported"), 2)
    assert failed.warning is not None
    assert "BTC/USD" in failed.warning
    assert failed.meta is not None
    assert failed.meta["type"] == "subscribe_error"
    assert subs.all_failed
    assert subs.failed == {"BTC/USD": "Currency pair not supported"}


def test_checksum_resync_is_once_per_desync_and_paced() -> None:
    subs = Subscriptions(("ETH/USD",), 10, resubscribe_interval_ns=5 * SECOND)
    subs.on_connect(0)
    subs.on_control(status("ETH/USD", "subscribed"), 0)
    subs.on_checksum_failed("ETH/USD", 1 * SECOND)
    subs.on_checksum_failed("ETH/USD", 1 * SECOND)
    [unsubscribe] = subs.tick(1 * SECOND)
    assert unsubscribe.send is not None
    assert unsubscribe.send["event"] == "unsubscribe"
    assert unsubscribe.meta is not None
    assert unsubscribe.meta["type"] == "resubscribe"
    assert subs.tick(1 * SECOND) == []
    [subscribe] = subs.on_control(status("ETH/USD", "unsubscribed"), 2 * SECOND)
    assert subscribe.send is not None
    assert subscribe.send["event"] == "subscribe"
    subs.on_control(status("ETH/USD", "subscribed"), 2 * SECOND)
    subs.on_checksum_failed("ETH/USD", 3 * SECOND)
    assert subs.tick(3 * SECOND) == []  # paced: 5 s after the last resync
    [again] = subs.tick(6 * SECOND)
    assert again.send is not None
    assert again.send["event"] == "unsubscribe"


def test_rate_limit_delays_the_retry() -> None:
    subs = Subscriptions(("ETH/USD",), 10, rate_limit_delay_ns=2 * SECOND)
    subs.on_connect(0)
    subs.on_control({"event": "error", "errorMessage": "Exceeded msg rate"}, 1 * SECOND)
    assert subs.tick(2 * SECOND) == []
    [retry] = subs.tick(3 * SECOND)
    assert retry.send is not None
    assert retry.send["pair"] == ["ETH/USD"]


def test_unanswered_subscribe_is_sent_again() -> None:
    subs = Subscriptions(("ETH/USD",), 10, subscribe_timeout_ns=3 * SECOND)
    subs.on_connect(0)
    assert subs.tick(2 * SECOND) == []
    assert len(subs.tick(3 * SECOND)) == 1


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_immediate_then_exponential_capped() -> None:
    backoff = Backoff(immediate=2, base_ns=SECOND, cap_ns=10 * SECOND, rng=random.Random(1))
    delays = [backoff.next_delay_ns() for _ in range(8)]
    assert delays[:2] == [0, 0]
    assert SECOND <= delays[2] <= 1.5 * SECOND
    assert 2 * SECOND <= delays[3] <= 3 * SECOND
    assert all(delay <= 10 * SECOND for delay in delays)
    assert delays[-1] == 10 * SECOND
    backoff.healthy()
    assert backoff.next_delay_ns() == 0
    assert backoff.next_delay_ns(maintenance=True) == 5 * SECOND


# -- segments ---------------------------------------------------------------------------------


def test_segment_path_layout() -> None:
    path = segment_path(Path("out"), "XBT/USD", T0 + 5 * SECOND + 7)
    assert path == Path("out/raw/BTC-USD/2025-11-21/BTC-USD.20251121T000005Z.jsonl.zst")
    assert (
        segment_path(Path("out"), "BTC/USD", T0, 2).name == "BTC-USD.20251121T000000Z-2.jsonl.zst"
    )


def read_lines(path: Path) -> list[dict]:
    return list(SegmentReader(path))


def test_stream_holds_lines_until_commit_and_rotates_on_utc_boundary(tmp_path: Path) -> None:
    checkpoint = {"type": "checkpoint", "pair": "XBT/USD", "channel": "book-10"}
    stream = SegmentStream(tmp_path, "BTC/USD", 60 * SECOND, None, lambda pair: [checkpoint])
    stream.write(T0 + 30 * SECOND, b'{"recv_ns":1,"seq":0,"msg":{}}\n')
    assert not (tmp_path / "raw").exists()
    stream.commit()
    first = stream.current
    assert first is not None
    assert first.name == "BTC-USD.20251121T000030Z.jsonl.zst.partial"
    stream.write(T0 + 59 * SECOND, b'{"recv_ns":2,"seq":1,"msg":{}}\n')
    stream.write(T0 + 61 * SECOND, b'{"recv_ns":3,"seq":2,"msg":{}}\n')
    second = stream.current
    assert second is not None
    assert second.name == "BTC-USD.20251121T000100Z.jsonl.zst.partial"
    stream.close(T0 + 62 * SECOND, "stop")
    done = stream.finished
    assert [p.name for p in done] == [
        "BTC-USD.20251121T000030Z.jsonl.zst",
        "BTC-USD.20251121T000100Z.jsonl.zst",
    ]
    old, new = read_lines(done[0]), read_lines(done[1])
    assert [r.get("seq") for r in old] == [0, 1, None]
    assert old[-1]["meta"] == {"type": "segment_end", "reason": "rotate"}
    assert new[0]["meta"] == checkpoint
    assert new[1]["seq"] == 2
    assert new[-1]["meta"]["reason"] == "stop"


def test_stream_never_reuses_a_name(tmp_path: Path) -> None:
    existing = segment_path(tmp_path, "ETH/USD", T0)
    existing.parent.mkdir(parents=True)
    existing.with_name(existing.name + ".partial").write_bytes(b"old")
    stream = SegmentStream(tmp_path, "ETH/USD", 3600 * SECOND, None, lambda pair: [])
    stream.write(T0, b"{}\n")
    stream.commit()
    assert stream.current is not None
    assert stream.current.name == "ETH-USD.20251121T000000Z-1.jsonl.zst.partial"
    stream.close(T0, "stop")
    assert existing.with_name(existing.name + ".partial").read_bytes() == b"old"


def test_stream_rotates_by_size(tmp_path: Path) -> None:
    stream = SegmentStream(tmp_path, "ETH/USD", 3600 * SECOND, 200, lambda pair: [])
    stream.commit()
    for i in range(50):
        stream.write(T0 + i, b'{"recv_ns":%d,"seq":%d,"msg":[%d]}\n' % (i, i, i * 7919))
        stream.flush(0)
    stream.close(T0 + 100, "stop")
    assert len(stream.finished) > 2
    seqs = [r["seq"] for path in stream.finished for r in read_lines(path) if "seq" in r]
    assert seqs == list(range(50))


# -- lock, config, decoding -------------------------------------------------------------------


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    assert lock_path(tmp_path, ("ETH/USD", "XBT/USD")) == lock_path(
        tmp_path, ("BTC/USD", "ETH/USD")
    )
    with OutputLock(tmp_path, ("BTC/USD",)):
        with pytest.raises(RecordError, match="already recording"):
            OutputLock(tmp_path, ("XBT/USD",)).acquire()
        OutputLock(tmp_path, ("ETH/USD",)).acquire().release()
    OutputLock(tmp_path, ("BTC/USD",)).acquire().release()


def test_lock_in_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write the output folder"):
        OutputLock(blocker / "out", ("BTC/USD",)).acquire()


def test_config_validates_before_connecting() -> None:
    assert RecordConfig(pairs=("btc-usd", "XBT/USD", "eth/usd")).pairs == ("BTC/USD", "ETH/USD")
    with pytest.raises(UsageError, match="--depth 42"):
        RecordConfig(pairs=("BTC/USD",), depth=42)
    with pytest.raises(UsageError, match="BASE/QUOTE"):
        RecordConfig(pairs=("BTCUSD",))
    with pytest.raises(UsageError, match="ws://"):
        RecordConfig(pairs=("BTC/USD",), url="http://example.com")


@pytest.mark.parametrize(
    "text", ['{"event":"heartbeat"}', "[1,2]", "<html>", '{"a":\n1}', "null", "", '"x"']
)
def test_decode_frame_agrees_with_is_json_text(text: str) -> None:
    assert decode_frame(text)[1] == is_json_text(text)
