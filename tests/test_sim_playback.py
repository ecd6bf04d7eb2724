"""Playback of real captures and segments through the simulator: exact text, real checksums."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sim_support import Client

from kbook.captures import read_capture
from kbook.errors import InputError
from kbook.feed import Outcome
from kbook.segment import frame_line, meta_line, write_segment
from kbook.sim import Simulator, SimulatorConfig, load_capture

KRAKEN_PAIRS = [
    "ADA/XBT",
    "ETH/CHF",
    "GRT/ETH",
    "KSM/XBT",
    "OCEAN/XBT",
    "OMG/USD",
    "SC/EUR",
    "WAVES/EUR",
    "XBT/CHF",
    "XMR/USD",
]


def play_all(sim: Simulator, client: Client) -> None:
    """Wait for the whole capture to be sent, then read every book frame of it."""
    sim.wait_for(lambda s: s.playback_finished, timeout=30)
    sent = sim.count("snapshot") + sim.count("update")
    while sum(text.startswith("[") for text in client.texts) < sent:
        client.recv()


def test_orderbook_v1_json_plays_back_exactly(captures_dir: Path) -> None:
    capture = captures_dir / "orderbook-v1.json"
    config = SimulatorConfig(capture=capture, speed=math.inf)
    with Simulator(config) as sim, Client(sim.url) as client:
        client.subscribe(["XBT/USD"], depth=10, reqid=1)
        ack = client.recv()
        assert ack["channelName"] == "book-10"
        play_all(sim, client)
        assert client.outcomes[Outcome.SNAPSHOT] == 1
        assert client.outcomes[Outcome.UPDATE_OK] == 979
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
        # Only the channel id changes: the rest of every frame is the recorded text.
        recorded = [text for _, text in read_capture(capture) if text.startswith("[")]
        played = [text for text in client.texts if text.startswith("[")]
        assert len(played) == len(recorded) == 980
        prefix = f"[{ack['channelID']},"
        for mine, theirs in zip(played, recorded, strict=True):
            assert mine.startswith(prefix)
            assert mine[len(prefix) :] == theirs[theirs.index(",") + 1 :]


def test_kraken_ws_segment_plays_back_with_zero_failures(
    capture_segment: Callable[[str], Path],
) -> None:
    segment = capture_segment("KRAKEN.ws.50.0")
    config = SimulatorConfig(capture=segment, speed=math.inf)
    with Simulator(config) as sim, Client(sim.url) as client:
        client.subscribe(KRAKEN_PAIRS, depth=1000)
        play_all(sim, client)
        assert client.outcomes[Outcome.SNAPSHOT] == 10
        assert client.outcomes[Outcome.UPDATE_OK] == 4269
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
        assert client.outcomes[Outcome.DROPPED] == 0


def test_subscribed_pairs_filter_playback(captures_dir: Path) -> None:
    config = SimulatorConfig(capture=captures_dir / "KRAKEN.ws.50.0", speed=math.inf)
    with Simulator(config) as sim, Client(sim.url) as client:
        client.subscribe(["XMR/USD", "SC/EUR"], depth=1000)
        play_all(sim, client)
        played = {text.rsplit(",", 1)[1] for text in client.texts if text.startswith("[")}
        assert played == {'"XMR/USD"]', '"SC/EUR"]'}
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
        assert client.outcomes[Outcome.SNAPSHOT] == 2


def test_playback_offers_only_what_was_recorded(captures_dir: Path) -> None:
    config = SimulatorConfig(capture=captures_dir / "KRAKEN.ws.50.0", speed=math.inf)
    with Simulator(config) as sim, Client(sim.url) as client:
        client.subscribe(["XMR/USD"], depth=10)
        assert client.recv()["errorMessage"] == "Subscription depth not supported"
        client.subscribe(["XBT/USD"], depth=1000)
        assert client.recv()["errorMessage"] == "Currency pair not supported XBT/USD"


def test_playback_keeps_the_recorded_pace(captures_dir: Path) -> None:
    # The capture spans about 30 s of receive times; at 100x that is about 0.3 s.
    config = SimulatorConfig(capture=captures_dir / "KRAKEN.ws.50.0", speed=100.0)
    with Simulator(config) as sim, Client(sim.url) as client:
        client.subscribe(["XMR/USD"], depth=1000)
        client.recv()  # ack
        client.recv()  # snapshot, the first frame
        started = time.monotonic()
        sim.wait_for(lambda s: s.playback_finished, timeout=10)
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed <= 2.0


def test_bad_checksum_fault_in_playback(captures_dir: Path) -> None:
    config = SimulatorConfig(capture=captures_dir / "orderbook-v1.json", speed=math.inf)
    with Simulator(config) as sim:
        sim.faults.bad_checksum_at(10)
        with Client(sim.url) as client:
            client.subscribe(["XBT/USD"])
            play_all(sim, client)
            assert client.outcomes[Outcome.UPDATE_OK] == 9
            assert client.outcomes[Outcome.CHECKSUM_FAILED] == 1
            assert client.outcomes[Outcome.DROPPED] == 979 - 10


def test_segment_msg_text_is_cut_out_byte_for_byte(tmp_path: Path) -> None:
    # Odd but valid spacing survives: the text is cut from the line, never re-serialised.
    snapshot = (
        '[7, {"as":[["1.10","2.00000000","1.0"]],"bs":[["1.00","3.00000000","1.0"]]},'
        ' "book-10", "XBT/USD"]'
    )
    update = '[7,{"a":[["1.10","0.00000000","2.0"]],"c":"12345"},"book-10","XBT/USD"]'
    segment = write_segment(
        tmp_path / "x.jsonl.zst",
        [
            meta_line(1, {"type": "connect"}),
            frame_line(2, 0, '{"event":"heartbeat"}', True),
            frame_line(3, 1, snapshot, True),
            frame_line(4, 2, "not json", False),
            frame_line(5, 3, update, True),
        ],
    )
    capture = load_capture(segment)
    assert [frame.text(7) for frame in capture.frames] == [snapshot, update]
    assert [frame.recv_ns for frame in capture.frames] == [3, 5]
    assert capture.depths == {"XBT/USD": (10,)}


def test_playback_serves_no_book_of_a_depth_kraken_does_not(tmp_path: Path) -> None:
    """A capture's frames of ``book-3`` or ``book-0`` are malformed, never a book to serve: the
    simulator offers only the Kraken depths the capture holds."""
    snapshot = '[7,{"as":[["1.10","2.0","1.0"]],"bs":[["1.00","3.0","1.0"]]},"%s","XBT/USD"]'
    lines = [
        frame_line(i, i, snapshot % channel, True)
        for i, channel in enumerate(["book-3", "book-0", "book-10", "book-1001"])
    ]
    capture = load_capture(write_segment(tmp_path / "x.jsonl.zst", lines))
    assert [frame.channel for frame in capture.frames] == ["book-10"]
    assert capture.depths == {"XBT/USD": (10,)}


def test_missing_or_empty_capture_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.json: no such capture file"):
        Simulator(SimulatorConfig(capture=tmp_path / "nope.json"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"event":"heartbeat"}\n')
    with pytest.raises(InputError, match="no v1 book frames"):
        load_capture(empty)
