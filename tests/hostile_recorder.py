"""Run the real recorder as ``kbook record`` does, with the tests' fast timings (one JSON
argument: ``RecordConfig`` fields over ``record_support.FAST``), and print a JSON report (frames,
stop reason, peak RSS) on stdout when it stops. Used by ``tests/test_drill_hostile.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from record_support import FAST  # noqa: E402

from kbook.api import Api  # noqa: E402
from recorder import RecordConfig, Recorder, stop_on_signals  # noqa: E402


def peak_rss_kb() -> int:
    """This process's own peak RSS (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux keeps that
    across ``execve``, so it would report the peak of the pytest process this one was forked from."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    overrides = json.loads(sys.argv[1])
    settings = {"pairs": ("BTC/USD",), "api": Api.V1, **FAST, **overrides}
    settings["pairs"] = tuple(settings["pairs"])
    recorder = Recorder(RecordConfig(**settings), stderr=sys.stderr)
    with stop_on_signals(recorder):
        summary = recorder.run()
    report = {
        "frames": summary.frames,
        "stop_reason": summary.stop_reason,
        "reconnects": summary.reconnects,
        "maxrss_kb": peak_rss_kb(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
