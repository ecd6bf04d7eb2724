"""The one object the recorder calls for monitoring and shipping, once per pass of its loop.

``Monitor.tick`` is cheap when nothing is due (one comparison). Once a second it copies the
recorder's state into the metrics (``recorder.metrics``), rewrites the textfile, and hands the
segments closed since the last tick to the uploader (``recorder.upload``). Everything it does
happens in the recorder's thread and never waits on the network: serving ``/metrics`` and uploading
run in threads of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kbook.errors import OutputError
from kbook.units import SECOND
from recorder.metrics import Metrics, recorder_state

if TYPE_CHECKING:
    from recorder.record import Recorder
    from recorder.upload import Uploader


class Monitor:
    """Metrics, the metrics textfile and the uploader's queue, fed from the recorder's tick."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        textfile: Path | None = None,
        uploader: Uploader | None = None,
        interval_ns: int = SECOND,
    ) -> None:
        self.metrics = metrics
        self.textfile = textfile
        self.uploader = uploader
        self.interval_ns = interval_ns
        self._next_mono = 0
        self._handed: dict[str, int] = {}
        """Segments of each pair already handed to the uploader."""
        self._textfile_failed = False

    def tick(self, recorder: Recorder, now_mono: int, force: bool = False) -> None:
        """Called by the recorder after every frame and on every change of connection;
        does its work at most once per ``interval_ns`` unless ``force``."""
        if not force and now_mono < self._next_mono:
            return
        self._next_mono = now_mono + self.interval_ns
        if self.uploader is not None:
            for pair, stream in recorder.streams.streams.items():
                handed = self._handed.get(pair, 0)
                if len(stream.finished) > handed:
                    self.uploader.notify(stream.finished[handed:])
                    self._handed[pair] = len(stream.finished)
        if self.metrics is None:
            return
        self.metrics.update(recorder_state(recorder))
        if self.textfile is not None:
            try:
                self.metrics.write_textfile(self.textfile)
            except OutputError as exc:
                if not self._textfile_failed:  # once: the recording matters more
                    self._textfile_failed = True
                    recorder.reporter.warning(f"{exc}; metrics are not written there")
            else:
                self._textfile_failed = False
