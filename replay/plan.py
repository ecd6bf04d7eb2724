"""From surveyed segments to independent streams, each replayed through one ``BookFeed``.

A *stream* is a set of segments whose books must share one feed: segments are joined when they
hold a common pair (by common name, so ``XBT/USD`` and ``BTC/USD`` are one pair). The recorder
writes one stream of segments per pair, so pairs replay independently (and in parallel); a
capture holding ten pairs in one file is one stream of ten pairs. Inside a stream, segments keep
the order of ``kbook.segment.find_segments`` (first receive time, then name).

Each pair follows one book: its deepest recorded channel (``book-1000`` over ``book-10`` when
both were recorded). ``--levels`` beyond that depth and ``--pair`` names never recorded are
refused here, before any output exists.

Kraken v1 and v2 recordings never share a stream (nor a feed): segments are joined by (API, pair)
(``SegmentInfo.api``). Output is named by common pair name whatever the API, so a pair recorded
under both APIs would write two streams into one partition: that is refused, naming the pair,
unless ``--api v1`` or ``--api v2`` (``ReplayOptions.api``) keeps the segments of one API only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kbook.api import Api
from kbook.errors import FrameError, UsageError
from kbook.feed import channel_depth
from kbook.pairs import common_name
from replay.options import ReplayOptions
from replay.survey import SegmentInfo


@dataclass(frozen=True, slots=True)
class Stream:
    """Segments replayed in order through one feed, and the book each wanted pair follows."""

    segments: tuple[SegmentInfo, ...]
    channels: dict[str, str]
    """Common pair name -> followed channel (``"book-100"``), for the pairs to output."""
    api: str = Api.V1
    """The Kraken WebSocket API of every segment of the stream."""

    @property
    def size(self) -> int:
        return sum(info.size for info in self.segments)

    @property
    def books(self) -> frozenset[tuple[str, str]]:
        """Every (wire pair, channel) with a frame or checkpoint in the stream's segments."""
        return frozenset(book for info in self.segments for book in info.books)


def plan_streams(infos: Sequence[SegmentInfo], options: ReplayOptions) -> list[Stream]:
    """Group segments into streams and check ``--pair``/``--levels``/``--api`` against what was
    recorded."""
    if options.api is not None:
        infos = [info for info in infos if info.api == options.api]
        if not any(info.books for info in infos):
            raise UsageError(f"no Kraken {options.api} order book frames in the segments given")
    _check_apis(infos, options)
    channels = _deepest_channels(infos)
    wanted = _wanted_pairs(channels, options)
    _check_levels(channels, wanted, options.levels)
    streams = []
    for group in _group(infos):
        pairs = {common_name(pair) for info in group for pair, _ in info.books}
        followed = {pair: channels[pair] for pair in sorted(pairs & wanted)}
        if followed:
            streams.append(Stream(segments=tuple(group), channels=followed, api=group[0].api))
    return streams


def _check_apis(infos: Sequence[SegmentInfo], options: ReplayOptions) -> None:
    """Refuse a wanted pair recorded under both APIs: its rows would have two sources."""
    names: dict[str, set[str]] = {Api.V1: set(), Api.V2: set()}
    for info in infos:
        names.setdefault(info.api, set()).update(common_name(pair) for pair, _ in info.books)
    both = names[Api.V1] & names[Api.V2]
    if options.pairs is not None:
        both &= options.pairs
    if both:
        raise UsageError(
            f"{', '.join(sorted(both))} recorded with both Kraken APIs (v1 and v2) in the "
            "segments given; pass --api v1 or --api v2 to replay one of them"
        )


def _deepest_channels(infos: Sequence[SegmentInfo]) -> dict[str, str]:
    channels: dict[str, str] = {}
    for info in infos:
        for pair, channel in info.books:
            try:
                depth = channel_depth(channel)
            except FrameError:  # a malformed name: the feed counts such frames
                continue
            name = common_name(pair)
            known = channels.get(name)
            if known is None or channel_depth(known) < depth:
                channels[name] = channel
    return channels


def _wanted_pairs(channels: dict[str, str], options: ReplayOptions) -> set[str]:
    if not channels:
        raise UsageError("no order book frames in the segments given")
    if options.pairs is None:
        return set(channels)
    missing = sorted(options.pairs - channels.keys())
    if missing:
        raise UsageError(
            f"pair {', '.join(missing)} not found in the segments; recorded: "
            + ", ".join(sorted(channels))
        )
    return set(options.pairs)


def _check_levels(channels: dict[str, str], wanted: set[str], levels: int) -> None:
    for pair in sorted(wanted):
        depth = channel_depth(channels[pair])
        if levels > depth:
            raise UsageError(
                f"--levels {levels} is deeper than the recorded book of {pair} "
                f"({channels[pair]}); use --levels {depth} or less"
            )


def _group(infos: Sequence[SegmentInfo]) -> list[list[SegmentInfo]]:
    """Connected groups of segments of one API sharing a pair, each in the given (time) order."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for info in infos:
        names = [(info.api, common_name(pair)) for pair, _ in info.books]
        for name in names[1:]:
            parent[root(name)] = root(names[0])
    groups: dict[tuple[str, str], list[SegmentInfo]] = {}
    for info in infos:
        if info.books:
            key = root((info.api, common_name(next(iter(info.books))[0])))
            groups.setdefault(key, []).append(info)
    return list(groups.values())
