"""kbook: record the Kraken WebSocket order book losslessly; replay it into Parquet snapshots.

The shared core: ``kbook.book`` (one order book, exact), ``kbook.feed`` (v1 frames to books),
``kbook.segment`` (the segment file format), ``kbook.verify`` (checksum audit of segments).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kbook")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from kbook.book import Book, checksum_piece
from kbook.errors import (
    FrameError,
    InputError,
    KbookError,
    OutputError,
    RecordError,
    SegmentError,
    UsageError,
)
from kbook.feed import BookFeed, Outcome, PairStats
from kbook.segment import SegmentReader, SegmentWriter, find_segments

__all__ = [
    "Book",
    "BookFeed",
    "FrameError",
    "InputError",
    "KbookError",
    "Outcome",
    "OutputError",
    "PairStats",
    "RecordError",
    "SegmentError",
    "SegmentReader",
    "SegmentWriter",
    "UsageError",
    "__version__",
    "checksum_piece",
    "find_segments",
]
