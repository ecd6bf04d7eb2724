"""Recorded book frames for the simulator to serve again: kbook segments and third-party captures.

``load_capture`` reads either a kbook segment (``kbook.segment``; ``msg`` lines only, ``raw`` and
``meta`` lines are skipped) or any capture ``kbook.captures.read_capture`` understands, and keeps
the *book data* frames (arrays on a ``book-N`` channel) with their receive times. Control frames are
not replayed: the simulator answers the client's own subscribe, sends its own status and heartbeats.

Frame texts are kept exactly as recorded, because the checksum depends on every digit. From a
segment the ``msg`` text is cut out of the raw line bytes rather than re-serialised. When served,
only the channel id (the first array element) is rewritten, to the id of the client's subscription.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kbook.captures import read_capture
from kbook.errors import FrameError, InputError, SegmentError
from kbook.feed import channel_depth
from kbook.segment import SegmentReader, check_segment_file
from kbook.sim.market import canonical_pair

_MSG_KEY = b'"msg":'


@dataclass(frozen=True, slots=True)
class PlaybackFrame:
    """One recorded book frame, split so its channel id can be replaced cheaply."""

    recv_ns: int
    tail: str
    """The recorded text from the comma after the channel id to the end."""
    pair: str
    """The pair as recorded (``msg[-1]``)."""
    channel: str
    snapshot: bool
    key: tuple[str, int]
    """(canonical pair, depth): the key of the subscription that receives this frame."""

    def text(self, channel_id: int) -> str:
        """The recorded frame with ``channel_id`` as its first element."""
        return f"[{channel_id}{self.tail}"


@dataclass
class Capture:
    """The book frames of one recording, oldest first, and what they cover."""

    path: Path
    frames: list[PlaybackFrame] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)
    """Canonical pair -> pair as recorded."""
    depths: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Canonical pair -> depths recorded for it."""

    def depths_for(self, canonical: str) -> tuple[int, ...]:
        return self.depths.get(canonical, ())


def load_capture(path: Path) -> Capture:
    """Book frames of a segment or capture file; ``InputError`` naming the file if unusable."""
    if not path.exists():
        raise InputError(f"{path}: no such capture file")
    if not path.is_file():
        raise InputError(f"{path}: the capture is not a file")
    try:
        check_segment_file(path)
    except SegmentError:
        texts = read_capture(path)
    else:
        texts = list(_segment_texts(path))
    capture = Capture(path)
    depths: dict[str, set[int]] = {}
    for recv_ns, text in texts:
        frame = _book_frame(recv_ns, text)
        if frame is not None:
            capture.frames.append(frame)
            canonical, depth = frame.key
            capture.pairs.setdefault(canonical, frame.pair)
            depths.setdefault(canonical, set()).add(depth)
    if not capture.frames:
        raise InputError(f"{path}: no v1 book frames to play back")
    capture.depths = {pair: tuple(sorted(found)) for pair, found in depths.items()}
    return capture


def _segment_texts(path: Path) -> list[tuple[int, str]]:
    """(recv_ns, exact msg text) of every ``msg`` line of a segment."""
    texts: list[tuple[int, str]] = []
    for _number, line in SegmentReader(path).raw_lines():
        if _MSG_KEY not in line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(record) is not dict or "msg" not in record:
            continue
        recv_ns = record.get("recv_ns")
        if type(recv_ns) is not int:
            continue
        texts.append((recv_ns, _msg_text(line, record["msg"])))
    return texts


def _msg_text(line: bytes, msg: Any) -> str:
    """The ``msg`` value's text as written in ``line``.

    The recorder writes ``msg`` last (``{"recv_ns":N,"seq":S,"msg":<frame>}``), so the frame is the
    bytes between the key and the closing brace. A line laid out otherwise falls back to a compact
    re-serialisation, which keeps every string (and so every checksum digit) intact.
    """
    start = line.find(_MSG_KEY)
    candidate = line[start + len(_MSG_KEY) : line.rstrip().rfind(b"}")].strip()
    try:
        if orjson.loads(candidate) == msg:
            return candidate.decode("utf-8")
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps(msg).decode("utf-8")


def _book_frame(recv_ns: int, text: str) -> PlaybackFrame | None:
    """A ``PlaybackFrame`` for a v1 book data frame; None for anything else."""
    if not text.lstrip().startswith("["):
        return None
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(msg) is not list or len(msg) < 4 or type(msg[0]) is not int:
        return None
    channel, pair, payload = msg[-2], msg[-1], msg[1]
    if type(channel) is not str or type(pair) is not str or type(payload) is not dict:
        return None
    try:
        depth = channel_depth(channel)
    except FrameError:  # another channel, or a book of no Kraken depth: never served
        return None
    comma = text.find(",")
    snapshot = "as" in payload or "bs" in payload
    key = (canonical_pair(pair), depth)
    return PlaybackFrame(recv_ns, text[comma:], pair, channel, snapshot, key)
