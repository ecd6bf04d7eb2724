"""The parse floor: zstd + line split + ``orjson.loads`` of every line of a recording, no book.

    .venv/bin/python benchmarks/parse_floor.py RAW_FOLDER

prints ``{"lines": ..., "cpu": ...}``: the lines parsed and the CPU seconds of this process
(user + system) spent parsing them, its imports left out. ``replay_speed.py`` runs it as a child
process beside each end-to-end replay, so that both are measured alike; it imports nothing but
orjson and zstandard (not kbook: numpy, which pyarrow loads, starts threads whose CPU a process
of its own would count against the floor).
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import zstandard


def chunks(path: Path) -> Iterator[list[bytes]]:
    """Decompressed lines of a segment, a read buffer at a time."""
    decompressor = zstandard.ZstdDecompressor()
    with open(path, "rb") as fh:
        reader = decompressor.stream_reader(fh, read_across_frames=True)
        tail = b""
        while block := reader.read(1 << 16):
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            yield lines


def parse_floor(raw: Path) -> int:
    """zstd + line split + orjson.loads of every line of every segment; returns the lines."""
    loads = orjson.loads
    count = 0
    for path in sorted(raw.rglob("*.jsonl.zst")):
        for lines in chunks(path):
            for line in lines:
                loads(line)
            count += len(lines)
    return count


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    started = cpu_seconds()
    lines = parse_floor(Path(sys.argv[1]))
    print(json.dumps({"lines": lines, "cpu": cpu_seconds() - started}))
