"""Helpers for the recorder tests: fast timings, a recorder in a thread, reading what it wrote.

The segments are read back from the raw line bytes, not re-serialised, so "byte-identical" means
exactly that: the text between ``"msg":`` and the closing brace is the frame as the simulator sent it.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kbook.segment import SegmentReader, find_segments
from kbook.sim import SentFrame, Simulator
from kbook.units import MS, SECOND
from recorder import RecordConfig, Recorder, RecordSummary
from recorder.monitor import Monitor

FAST: dict[str, Any] = {
    "stall_timeout_ns": 1500 * MS,
    "immediate_retries": 3,
    "backoff_base_ns": 50 * MS,
    "backoff_cap_ns": 200 * MS,
    "maintenance_delay_ns": 600 * MS,
    "subscribe_timeout_ns": 2 * SECOND,
    "resubscribe_interval_ns": 300 * MS,
    "rate_limit_delay_ns": 300 * MS,
    "flush_interval_ns": 200 * MS,
    "tick_ns": 50 * MS,
    "connect_timeout_ns": 2 * SECOND,
    "connect_retries": 10,
    "quiet": True,
}
"""Timings that let every fault be survived within a second or two."""

_FRAME = re.compile(rb'^\{"recv_ns":(\d+),"seq":(\d+),"msg":(.*)\}$', re.DOTALL)


def fast_config(
    sim: Simulator, out: Path, pairs: tuple[str, ...], **overrides: Any
) -> RecordConfig:
    return RecordConfig(pairs=pairs, out=out, url=sim.url, **{**FAST, **overrides})


class Background:
    """``Recorder.run`` in a thread; ``finish`` stops it and returns the summary (or raises)."""

    def __init__(self, config: RecordConfig, monitor: Monitor | None = None) -> None:
        self.stderr = io.StringIO()
        self.recorder = Recorder(config, stderr=self.stderr, monitor=monitor)
        self.summary: RecordSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def _run(self) -> None:
        try:
            self.summary = self.recorder.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.recorder.stop()
        self.thread.join(timeout=10)

    def finish(self, timeout: float = 10.0) -> RecordSummary:
        self.recorder.stop()
        return self.join(timeout)

    def join(self, timeout: float = 10.0) -> RecordSummary:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the recorder did not stop in time"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


@dataclass
class Output:
    """Everything the recorder wrote under ``out``, per file and merged."""

    files: list[Path]
    lines: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)
    frames: dict[int, str] = field(default_factory=dict)
    """seq -> frame text as written (``msg`` verbatim, or the ``raw`` string)."""
    problems: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [self.frames[seq] for seq in sorted(self.frames)]

    def metas(self, kind: str | None = None, path: Path | None = None) -> list[dict[str, Any]]:
        files = [path] if path is not None else self.files
        return [
            record["meta"] | {"recv_ns": record["recv_ns"]}
            for p in files
            for record in self.lines[p]
            if "meta" in record and (kind is None or record["meta"]["type"] == kind)
        ]

    def files_of(self, name: str) -> list[Path]:
        return [path for path in self.files if f"/raw/{name}/" in path.as_posix()]

    def opened_with_a_book(self, name: str) -> list[Path]:
        """The segments of ``name`` opened once its book was valid, so they start with a
        checkpoint: every file after the one holding the first snapshot. (A rotation before that
        snapshot, as when a session starts just before a second boundary, has none to write.)"""
        files = self.files_of(name)
        for index, path in enumerate(files):
            if any(_is_snapshot(record.get("msg")) for record in self.lines[path]):
                return files[index + 1 :]
        raise AssertionError(f"no snapshot of {name} was recorded")


def _is_snapshot(msg: object) -> bool:
    """A v1 (``[id, {"as": ...}, ...]``) or v2 (``{"type": "snapshot"}``) book snapshot frame."""
    if isinstance(msg, list):
        return len(msg) >= 4 and isinstance(msg[1], dict) and "as" in msg[1]
    return isinstance(msg, dict) and msg.get("channel") == "book" and msg.get("type") == "snapshot"


def read_output(out: Path) -> Output:
    """Read every segment under ``out/raw`` (``.partial`` too) from its raw line bytes."""
    files = find_segments([out / "raw"])
    output = Output(files)
    for path in files:
        reader = SegmentReader(path)
        records: list[dict[str, Any]] = []
        for _, line in reader.raw_lines():
            record = orjson.loads(line)
            records.append(record)
            if "seq" not in record or "meta" in record:
                continue
            match = _FRAME.match(line)
            text = match.group(3).decode() if match else record["raw"]
            previous = output.frames.setdefault(record["seq"], text)
            assert previous == text, f"seq {record['seq']} differs between streams"
        output.lines[path] = records
        output.problems += [str(problem) for problem in reader.problems]
    return output


def match_connections(recorded: list[str], sent: list[SentFrame]) -> dict[int, int]:
    """Check that ``recorded`` is, connection by connection, a prefix of what was sent.

    Returns the frames each connection lost at its end (sent but never recorded).
    """
    by_conn: dict[int, list[str]] = {}
    for frame in sent:
        by_conn.setdefault(frame.connection, []).append(frame.text)
    conns = sorted(by_conn)
    index = {conn: 0 for conn in conns}
    current = 0
    for position, text in enumerate(recorded):
        while True:
            conn = conns[current]
            frames = by_conn[conn]
            if index[conn] < len(frames) and frames[index[conn]] == text:
                index[conn] += 1
                break
            current += 1
            if current == len(conns) or by_conn[conns[current]][0] != text:
                raise AssertionError(
                    f"recorded frame {position} is not the next frame sent: {text[:120]}"
                )
    return {conn: len(by_conn[conn]) - index[conn] for conn in conns}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true (every 20 ms), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def updates_on(sim: Simulator, connection: int) -> int:
    return sim.count("update", connection)
