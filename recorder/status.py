"""Plain status lines on stderr, readable in a cron mail: a UTC timestamp, no colours, no redraws.

Three kinds: the periodic ``status`` line (every ``interval_ns``, silent when quiet), ``note`` for
events worth knowing (reconnects; silent when quiet) and ``warning`` for what the user must fix (a
refused pair), printed even when quiet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from kbook.units import SECOND, utc_text


def human_bytes(count: int) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as ``--max-segment-mb``)."""
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in ("kB", "MB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} GB"


class Reporter:
    """Writes timestamped one-line messages to ``stream`` (None: nowhere)."""

    def __init__(self, stream: TextIO | None, quiet: bool, interval_ns: int = 10 * SECOND) -> None:
        self.stream = stream
        self.quiet = quiet
        self.interval_ns = interval_ns
        self._next_mono = time.monotonic_ns() + interval_ns
        self._last_frames = 0
        self._last_mono = time.monotonic_ns()

    def warning(self, text: str) -> None:
        self._line(f"kbook: warning: {text}")

    def note(self, text: str) -> None:
        if not self.quiet:
            self._line(f"kbook record: {text}")

    def status_due(self, now_mono: int) -> bool:
        return not self.quiet and now_mono >= self._next_mono

    def status(
        self,
        now_mono: int,
        frames: int,
        checksums_ok: int,
        checksums_failed: int,
        reconnects: int,
        bytes_written: int,
        current: list[Path],
        lag_ns: int = 0,
    ) -> None:
        """The steady status line; call when ``status_due``."""
        elapsed = max(now_mono - self._last_mono, 1) / SECOND
        rate = (frames - self._last_frames) / elapsed
        self._last_frames, self._last_mono = frames, now_mono
        self._next_mono = now_mono + self.interval_ns
        segment = current[0].name if current else "-"
        if len(current) > 1:
            segment += f" (+{len(current) - 1} more)"
        self._line(
            f"kbook record: {rate:.1f} frames/s, checksums ok {checksums_ok} "
            f"failed {checksums_failed}, reconnects {reconnects}, "
            f"written {human_bytes(bytes_written)}, lag {lag_ns / SECOND:.1f} s, segment {segment}"
        )

    def _line(self, text: str) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(f"{utc_text(time.time_ns(), 0)} {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr (cron, nohup) must not stop the recording
