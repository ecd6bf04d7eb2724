"""Read third-party captures of Kraken's feed as ``(recv_ns, frame text)`` pairs.

Three layouts are understood, all found in the test captures (``tests/data/captures``):

- cryptofeed's text log: ``URL <-> ts`` (connect), ``URL <- ts: json`` (sent), ``ts: json`` (received);
  the received text is kept verbatim;
- one JSON frame per line (``*.jsonl``), no timestamps;
- a JSON document ``{"init": [...], "updates": [...]}`` of decoded frames, re-serialised compactly
  (strings, and so every checksum digit, survive; only whitespace changes).

Frames without a timestamp get ``start_ns + i * step_ns``. ``capture_to_segment`` turns any of them into
a kbook segment, so captures can be verified, replayed and served by the simulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from kbook.errors import InputError
from kbook.segment import frame_line, is_json_text, write_segment

DEFAULT_START_NS = 1_700_000_000_000_000_000
DEFAULT_STEP_NS = 1_000_000


def read_capture(
    path: Path, start_ns: int = DEFAULT_START_NS, step_ns: int = DEFAULT_STEP_NS
) -> list[tuple[int, str]]:
    """Received frames of a capture file, oldest first."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read capture: {exc.strerror}") from exc
    stripped = text.lstrip()
    if stripped.startswith("{") and '"init"' in text[:200] and '"updates"' in text:
        return list(_json_document(path, text, start_ns, step_ns))
    first = stripped.split("\n", 1)[0]
    if first.startswith(("[", "{")):
        return list(_json_lines(path, text, start_ns, step_ns))
    return list(_cryptofeed_log(path, text))


def capture_to_segment(capture: Path, segment: Path, start_ns: int = DEFAULT_START_NS) -> Path:
    """Write the received frames of ``capture`` as a bare segment (``msg``/``raw`` lines only)."""
    frames = read_capture(capture, start_ns=start_ns)
    lines = (
        frame_line(recv_ns, seq, text, is_json_text(text))
        for seq, (recv_ns, text) in enumerate(frames)
    )
    return write_segment(segment, lines)


def _cryptofeed_log(path: Path, text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or " <-> " in line or " <- " in line:
            continue
        stamp, sep, frame = line.partition(": ")
        if not sep:
            raise InputError(f"{path}:{number}: not a cryptofeed capture line")
        try:
            seconds, _, fraction = stamp.partition(".")
            recv_ns = int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9] or "0")
        except ValueError as exc:
            raise InputError(f"{path}:{number}: bad timestamp {stamp!r}") from exc
        yield recv_ns, frame


def _json_lines(path: Path, text: str, start_ns: int, step_ns: int) -> Iterator[tuple[int, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        yield start_ns + index * step_ns, line


def _json_document(path: Path, text: str, start_ns: int, step_ns: int) -> Iterator[tuple[int, str]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from exc
    frames = list(document.get("init", [])) + list(document.get("updates", []))
    for index, frame in enumerate(frames):
        yield start_ns + index * step_ns, json.dumps(frame, separators=(",", ":"))
