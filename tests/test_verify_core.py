"""``kbook verify`` reports the same whichever path applies the frames.

Verify runs plain updates through ``kbook.lines.LineFeed`` as replay does: the native core where it
was built, the pure-Python loop with ``KBOOK_NATIVE=0``, or (the straightforward way) no hot path
at all, every line decoded and applied by the feed. The reports (counts, receive times, invalid
time, problems with their line numbers) must be equal on recordings full of trouble, in Kraken's
v1 and v2, and on the real captures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from perf_support import SECOND, write_recording

from kbook.api import Api
from kbook.lines import LineFeed, native_core
from kbook.segment import frame_line, meta_line, write_segment
from kbook.verify import verify_paths

from conftest import V1_CAPTURES

PATHS = ["native", "python", "straightforward"]


def hand_back_everything(self: LineFeed, lines: Sequence[bytes], start: int) -> int:
    """``LineFeed.run`` that applies nothing: the feed does all the work."""
    return start


def report(source: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    with monkeypatch.context() as patch:
        if path == "python":
            patch.setenv("KBOOK_NATIVE", "0")
        elif path == "straightforward":
            patch.setattr(LineFeed, "run", hand_back_everything)
        return verify_paths([source]).to_json()


def assert_same_reports(source: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if native_core() is None:
        pytest.skip("kbook's native core was not built")
    reports = {path: report(source, path, monkeypatch) for path in PATHS}
    assert reports["native"]["checksums_ok"] > 0
    assert reports["python"] == reports["native"]
    assert reports["straightforward"] == reports["native"]
    return reports["native"]


@pytest.mark.slow
@pytest.mark.parametrize("api", list(Api))
@pytest.mark.parametrize(("pairs", "shared"), [(1, False), (2, True)])
def test_recordings_verify_the_same(
    api: Api, pairs: int, shared: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ("BTC/USD", "ETH/USD") if api == Api.V2 else ("XBT/USD", "ETH/USD")
    source = write_recording(tmp_path, names[:pairs], 5_000, seed=21, depth=100, shared=shared)
    if api == Api.V2:
        source = write_recording(
            tmp_path / "v2", names[:pairs], 5_000, seed=21, depth=100, shared=shared, api=api
        )
    found = assert_same_reports(source, monkeypatch)
    assert found["malformed_frames"] > 0
    assert any("not a well-formed Kraken frame" in problem for problem in found["problems"])


@pytest.mark.parametrize("capture", sorted(V1_CAPTURES))
def test_captures_verify_the_same(
    capture: str,
    capture_segment: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_same_reports(capture_segment(capture), monkeypatch)


def test_v2_capture_verifies_510_of_510_on_every_path(
    captures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim_support import write_v2_segment
    from test_v2 import capture_frames

    source = write_v2_segment(tmp_path / "capture.jsonl.zst", capture_frames(captures_dir))
    found = assert_same_reports(source, monkeypatch)
    assert (found["checksums_ok"], found["checksums_failed"]) == (510, 0)


def test_invalid_time_runs_on_the_stream_clock(tmp_path: Path) -> None:
    """The wall clock steps back a second, then a checksum fails and a snapshot follows 500 ms
    later by the stepped clock. Replay counts both at the stream's clock (the largest receive
    time so far), where the book is invalid for no grid time at all; verify measures the same,
    and the last receive time is the latest one seen."""
    from kbook.sim import Market

    market = Market("XBT/USD", 10, 1, clock=lambda: 1_700_000_000.0)
    at = 1_700_000_000 * SECOND
    back = at - SECOND
    texts = [
        (at, market.snapshot_frame(1)),
        (at + 10_000_000, market.update_frame(1)),
        (back + 10_000_000, market.update_frame(1, bad_checksum=True)),
        (back + 510_000_000, market.snapshot_frame(1)),
        (back + 520_000_000, market.update_frame(1)),
    ]
    lines = [meta_line(at, {"type": "session_start", "api": Api.V1})]
    lines += [frame_line(recv_ns, seq, text, True) for seq, (recv_ns, text) in enumerate(texts)]
    path = write_segment(tmp_path / "XBT-USD.20231114T221320Z.jsonl.zst", lines)
    found = verify_paths([path]).to_json()["pairs"]["BTC/USD"]
    assert (found["checksums_ok"], found["checksums_failed"]) == (2, 1)
    assert found["invalid_ns"] == 0
    assert found["last_recv_ns"] == at + 10_000_000
