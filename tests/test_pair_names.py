"""One name per pair, everywhere: replay, verify, watch --from and the Python API say ``BTC/USD``
for what Kraken v1 calls ``XBT/USD``, and take either spelling; names Kraken really lists
(``ETH2.S/ETH``) and JSON's escaped slash (``XBT\\/USD``) are read like any other."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from replay_support import SynthMarket, write_frames

import replay
from kbook.errors import UsageError
from kbook.segment import frame_line, write_segment
from kbook.verify import verify_paths

T0 = 1_763_683_200_000_000_000
KBOOK = [sys.executable, "-m", "kbook"]


@pytest.mark.slow
def test_every_command_shows_the_same_pair_name(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    segment = capture_segment("orderbook-v1.json")  # XBT/USD on the wire
    table = replay.replay_table(segment, every="1s")
    assert set(table.column("pair").to_pylist()) == {"BTC/USD"}
    assert set(verify_paths([segment]).pairs) == {"BTC/USD"}
    out = tmp_path / "snapshots"
    replay.replay_to_dataset(segment, out, every="1s")
    assert set(replay.read_snapshots(out, pair="XBT/USD").column("pair").to_pylist()) == {"BTC/USD"}
    watched = subprocess.run(
        [*KBOOK, "watch", "XBT/USD", "--from", str(segment), "--speed", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert watched.returncode == 0, watched.stderr
    assert "BTC/USD  book-10  replay" in watched.stdout
    assert "XBT/USD" not in watched.stdout + watched.stderr
    verified = subprocess.run(
        [*KBOOK, "verify", str(segment)], capture_output=True, text=True, timeout=60, check=False
    )
    row = next(
        line for line in verified.stdout.splitlines() if "book" not in line and "USD" in line
    )
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[1:3] == ["BTC/USD", "XBT/USD"]  # the pair, then its wire name


def test_read_snapshots_refuses_a_pair_the_dataset_lacks(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "snapshots"
    replay.replay_to_dataset(capture_segment("orderbook-v1.json"), out, every="1s")
    with pytest.raises(UsageError) as info:
        replay.read_snapshots(out, pair="DOGE/USD")
    assert str(info.value) == (
        f"pair DOGE/USD not found in the snapshot dataset {out}; it holds: BTC/USD"
    )


def test_a_pair_with_a_dot_can_be_selected(tmp_path: Path) -> None:
    market = SynthMarket("ETH2.S/ETH", seed=2)
    segment = write_frames(tmp_path / "raw" / "s.jsonl.zst", market.frames(40, T0, 10**8))
    table = replay.replay_table(segment, every="1s", pairs="ETH2.S/ETH")
    assert set(table.column("pair").to_pylist()) == {"ETH2.S/ETH"}
    out = tmp_path / "snapshots"
    replay.replay_to_dataset(segment, out, every="1s", pairs="eth2.s-eth")
    assert replay.read_snapshots(out, pair="ETH2.S/ETH").num_rows == table.num_rows


def test_an_escaped_slash_is_the_same_pair(tmp_path: Path) -> None:
    market = SynthMarket(seed=4)
    frames = list(market.frames(40, T0, 10**8))
    plain = write_frames(tmp_path / "plain" / "s.jsonl.zst", frames)
    escaped = [(ns, text.replace('"XBT/USD"', '"XBT\\/USD"')) for ns, text in frames]
    assert orjson.loads(escaped[0][1])[-1] == "XBT/USD"
    lines = (frame_line(ns, seq, text, True) for seq, (ns, text) in enumerate(escaped))
    path = write_segment(tmp_path / "escaped" / "s.jsonl.zst", lines)
    assert replay.replay_table(path, every="1s").equals(replay.replay_table(plain, every="1s"))
