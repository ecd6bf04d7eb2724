"""From surveyed segments to sources, each replayed through its own ``BookFeed``.

A *source* is one book as one recorder delivered it: the segments of one Kraken API, one recorder
run (or one bare recording), holding one channel per pair. Each source replays through its own
feed exactly as a lone recording does (checksums, invalidation rules), and ``replay.timeline``
then picks, per grid time, the best source of each pair. Nothing recorded is left out because
another source exists.

Which segments make a source (``Stream``):

- segments are grouped by API and by pairs they share (by common name, so ``XBT/USD`` and
  ``BTC/USD`` are one pair): the recorder writes one stream of segments per pair, so pairs replay
  independently (and in parallel); a capture holding ten pairs in one file is one source of ten;
- within a group, in time order (``kbook.segment.find_segments``), a segment that opens with a
  recorder's ``session_start`` line starts a new source named by its run id; any other segment
  continues the source that ended most recently at or before its first receive time and follows
  the same channel of each pair (a rotated segment of a run, the next file of a bare recording);
  a segment that overlaps every such source (a second recorder running at the same time) starts a
  source of its own. A run's later segments carry no run id, so two runs rotating at the same
  instant may swap continuations: harmless, since a rotation opens with checkpoints of every book,
  which replace it entirely;
- a source follows, per pair, its deepest channel (``book-1000`` over ``book-10`` when one
  connection subscribed both); a change of ``--depth`` between runs gives two sources.

``--levels`` is refused only when no source of a wanted pair is that deep (a shallower source's
rows have nulls beyond its depth), and ``--pair`` names never recorded are refused, both before
any output exists. v1 and v2 recordings of one pair are sources of one timeline; ``--api``
(``ReplayOptions.api``) keeps the segments of one API only.

The *fixed order* of sources, the timeline's last tie-break: v2 before v1, then by first receive
time, then by first segment path; ``Stream.rank`` is the position in that order.

The *tasks* (``plan_tasks``), the units of work whatever runs them (``replay.executor``): each
source is cut into *windows* of whole UTC days, so that a window is one pair-day (one source of
one or several pairs, for one day) that writes its own partitions. A window opens at a midnight
where the source has a segment that opens with checkpoints of every followed book before it (the
recorder rotates at UTC boundaries and writes them there), at least one grid interval before
the midnight: the window's task starts reading there (a checkpoint replaces the book entirely,
so nothing earlier is needed but the connection id, which the survey knows), replays without
output until the midnight, and writes only the rows of its window, as ``--start``/``--end``
would. Where no such segment exists, the day stays in the window before. A window of more than
``ReplayOptions.task_bytes`` of segments is cut again, at checkpointed segments, into pieces of
about that size, which ``replay.tasks`` joins into the window's rows. The task list depends on
the inputs and options only, never on the number of workers, and ``replay.tasks`` joins a
source's tasks into exactly what one run over it writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kbook.api import Api
from kbook.errors import FrameError, UsageError
from kbook.feed import channel_depth, sane_pair
from kbook.pairs import common_name
from kbook.units import DAY, utc_day
from replay.options import ReplayOptions
from replay.survey import SegmentInfo


@dataclass(frozen=True, slots=True)
class Stream:
    """A source: segments replayed in order through one feed, and the book each pair follows."""

    segments: tuple[SegmentInfo, ...]
    channels: dict[str, str]
    """Common pair name -> followed channel (``"book-100"``), for the pairs to output."""
    api: str = Api.V1
    """The Kraken WebSocket API of every segment of the stream."""
    run_id: str | None = None
    """The recorder run that wrote it, when its first segment says (``session_start``)."""
    rank: int = 0
    """Position in the fixed order of sources (see the module docstring)."""
    shared: frozenset[str] = frozenset()
    """Pairs that other sources hold too: their rows wait for ``replay.timeline``."""

    @property
    def size(self) -> int:
        return sum(info.size for info in self.segments)

    @property
    def books(self) -> frozenset[tuple[str, str]]:
        """Every (wire pair, channel) with a frame or checkpoint in the stream's segments."""
        return frozenset(book for info in self.segments for book in info.books)

    def label(self, pair: str) -> str:
        """The ``source`` column's value for ``pair``: ``v2 book-100 run 1f2e3d4c`` (the first
        eight digits of the recorder's run id), or ``v1 book-10`` for a recording without one."""
        label = f"{self.api} {self.channels[pair]}"
        return f"{label} run {self.run_id[:8]}" if self.run_id else label

    @property
    def first_ns(self) -> int | None:
        return next((info.first_ns for info in self.segments if info.first_ns is not None), None)


@dataclass(frozen=True, slots=True)
class Task:
    """Segments ``[first, stop)`` of source ``source`` of the plan, replayed on their own (see
    the module docstring): a task after the source's first starts at its checkpoints."""

    source: int
    """Index of the stream in ``plan_streams``' list."""
    stream: Stream
    first: int
    stop: int
    number: int = 0
    """Position among its window's tasks."""
    last: bool = True
    """The window's last task finishes its pairs; the others end at the head of ``stop``."""
    window: int = 0
    """Position among the source's windows."""
    start_ns: int | None = None
    """The window's first time (a midnight; None: the replay's ``--start``)."""
    end_ns: int | None = None
    """The time the window ends before (the next window's midnight; None: the replay's
    ``--end``)."""
    owned: int = 0
    """The first segment whose counts (frames skipped, problems, ...) are the task's: the
    segments before it are the previous window's, read again only to reach the midnight."""
    probe: int | None = None
    """For a window's last task, the segment where the next window's task starts reading: the
    task notes the clock and the connection before it (``TaskResult.probe``), which that task
    assumed (a task that starts there leaves it to the join of its window)."""

    @property
    def size(self) -> int:
        """Compressed bytes of the segments the task owns (those it reads before are the
        previous window's: counted there, for progress too)."""
        return sum(
            info.size for info in self.stream.segments[max(self.first, self.owned) : self.stop]
        )

    @property
    def day(self) -> str | None:
        """The UTC day of the first segment the task owns (None for segments without a
        receive time)."""
        owned = self.stream.segments[max(self.first, self.owned) : self.stop]
        first_ns = next((s.first_ns for s in owned if s.first_ns), None)
        return utc_day(first_ns) if first_ns is not None else None

    def describe(self) -> str:
        """Names the task in an error: its pairs and segments."""
        segments = self.stream.segments[self.first : self.stop]
        pairs = ", ".join(sorted(self.stream.channels)) or "a source"
        if not segments:
            return f"the replay of {pairs}"
        names = segments[0].path.name
        if len(segments) > 1:
            names += f" to {segments[-1].path.name}"
        return f"the replay of {pairs} from {names}"


def plan_tasks(streams: Sequence[Stream], options: ReplayOptions) -> list[Task]:
    """Every source's tasks, source after source, each source's in time order (see the module
    docstring). The segments ``--start``/``--end`` leave out (``span``) are in no task."""
    tasks: list[Task] = []
    for index, stream in enumerate(streams):
        first, stop = span(stream, options)
        followed = _followed(stream)
        windows = _windows(stream, first, stop, followed, options.every_ns)
        for number, (start, owned) in enumerate(windows):
            window_stop = windows[number + 1][1] if number + 1 < len(windows) else stop
            probe = windows[number + 1][0] if number + 1 < len(windows) else None
            bounds = [
                start,
                *_cuts(stream, owned, window_stop, followed, options.task_bytes, probe),
                window_stop,
            ]
            count = len(bounds) - 1
            tasks += [
                Task(
                    index,
                    stream,
                    bounds[n],
                    bounds[n + 1],
                    n,
                    n == count - 1,
                    number,
                    _midnight(stream, owned) if number else None,
                    _midnight(stream, window_stop) if window_stop < stop else None,
                    owned if n == 0 else bounds[n],
                    probe if n == count - 1 else None,
                )
                for n in range(count)
            ]
    return tasks


def _followed(stream: Stream) -> set[tuple[str, str]]:
    """The (wire pair, channel) books the stream follows."""
    return {
        (wire, channel)
        for wire, channel in stream.books
        if stream.channels.get(common_name(wire)) == channel
    }


def _windows(
    stream: Stream, first: int, stop: int, followed: set[tuple[str, str]], every: int
) -> list[tuple[int, int]]:
    """The windows of segments ``[first, stop)``: for each, the segment its first task starts
    at and the first segment it owns (the first of its day; a window's segments end where the
    next window's owned ones begin). A window opens at the first segment ``k`` of a new UTC day when
    the segment before it opens with checkpoints of every followed book, at least ``every``
    before the midnight, and is not the previous window's first."""
    segments = stream.segments
    windows = [(first, first)]
    day = _day(segments[first]) if first < stop else None
    for index in range(first + 1, stop):
        info = segments[index]
        if info.first_ns is None or _day(info) == day:
            continue
        day = _day(info)
        before = segments[index - 1]
        midnight = _midnight(stream, index)
        if (
            index - 1 > windows[-1][0]
            and before.first_ns is not None
            and before.first_ns <= midnight - every
            and followed <= before.head_checkpoints
        ):
            windows.append((index - 1, index))
    return windows


def _midnight(stream: Stream, index: int) -> int:
    """The start of the UTC day of segment ``index``'s first receive time."""
    first_ns = stream.segments[index].first_ns
    assert first_ns is not None
    return first_ns // DAY * DAY


def _cuts(
    stream: Stream,
    first: int,
    stop: int,
    followed: set[tuple[str, str]],
    task_bytes: int,
    probe: int | None,
) -> list[int]:
    """Where the pieces of a window's segments ``[first, stop)`` start after the first: at each
    checkpointed segment that ends ``task_bytes`` of segments, never after ``probe`` (the next
    window's first segment: the window's last piece must read it)."""
    segments = stream.segments
    cuts: list[int] = []
    size = 0
    last = stop if probe is None else min(stop, probe + 1)
    for index in range(first + 1, last):
        size += segments[index - 1].size
        info = segments[index]
        if info.first_ns is None or not followed <= info.head_checkpoints:
            continue
        if size >= task_bytes:
            cuts.append(index)
            size = 0
    return cuts


def _day(info: SegmentInfo) -> str | None:
    return utc_day(info.first_ns) if info.first_ns is not None else None


def span(stream: Stream, options: ReplayOptions) -> tuple[int, int]:
    """Indexes ``[first, stop)`` of the segments that must be read for --start/--end."""
    segments = stream.segments
    end = options.end_ns
    stop = len(segments)
    if end is not None:
        stop = next(
            (i for i, s in enumerate(segments) if s.first_ns is not None and s.first_ns >= end),
            stop,
        )
    first = 0
    start = options.start_ns
    if start is not None:
        wanted = set(stream.channels.items())
        latest = start - options.every_ns
        for index in range(1, stop):
            info = segments[index]
            if info.first_ns is None or info.first_ns > latest:
                break
            head = {(common_name(wire), channel) for wire, channel in info.head_checkpoints}
            if wanted <= head:
                first = index
    return first, stop


def plan_streams(infos: Sequence[SegmentInfo], options: ReplayOptions) -> list[Stream]:
    """Find the sources and check ``--pair``/``--levels``/``--api`` against what was recorded."""
    if options.api is not None:
        infos = [info for info in infos if info.api == options.api]
        if not any(info.books for info in infos):
            raise UsageError(f"no Kraken {options.api} order book frames in the segments given")
    chains = [chain for group in _group(infos) for chain in _chains(group)]
    if not chains:
        raise UsageError("no order book frames in the segments given")
    depths: dict[str, int] = {}
    for chain in chains:
        for pair, channel in _deepest_channels(chain).items():
            depths[pair] = max(depths.get(pair, 0), channel_depth(channel))
    wanted = _wanted_pairs(depths, options)
    _check_levels(depths, wanted, options.levels)
    chains.sort(key=_order)
    sources = []
    for chain in chains:
        followed = {
            pair: channel
            for pair, channel in sorted(_deepest_channels(chain).items())
            if pair in wanted
        }
        if followed:
            sources.append((chain, followed))
    holders: dict[str, int] = {}
    for _, followed in sources:
        for pair in followed:
            holders[pair] = holders.get(pair, 0) + 1
    return [
        Stream(
            segments=tuple(chain),
            channels=followed,
            api=chain[0].api,
            run_id=chain[0].run_id,
            rank=rank,
            shared=frozenset(pair for pair in followed if holders[pair] > 1),
        )
        for rank, (chain, followed) in enumerate(sources)
    ]


def _order(chain: list[SegmentInfo]) -> tuple[int, int, str]:
    """The fixed order of sources: v2 first, then by first receive time, then by path."""
    first = next((info.first_ns for info in chain if info.first_ns is not None), 1 << 126)
    return (0 if chain[0].api == Api.V2 else 1, first, str(chain[0].path))


def _chains(group: list[SegmentInfo]) -> list[list[SegmentInfo]]:
    """Split a group's segments (in time order) into sources, as the module docstring says."""
    chains: list[list[SegmentInfo]] = []
    ends: list[int | None] = []
    known: list[dict[str, str]] = []
    """Each chain's followed channel per pair so far."""
    for info in group:
        channels = _deepest_channels([info])
        choice = None
        if info.run_id is None and info.first_ns is not None:
            best = None
            for index, end in enumerate(ends):
                if end is None or end > info.first_ns or chains[index][0].api != info.api:
                    continue
                held = known[index]
                if any(held.get(pair, channel) != channel for pair, channel in channels.items()):
                    continue
                if best is None or end >= best:
                    best, choice = end, index
        if choice is None:
            chains.append([info])
            ends.append(info.last_ns)
            known.append(channels)
            continue
        chains[choice].append(info)
        last, end = info.last_ns, ends[choice]
        ends[choice] = last if end is None or (last is not None and last > end) else end
        for pair, channel in channels.items():
            known[choice].setdefault(pair, channel)
    return chains


def _deepest_channels(infos: Sequence[SegmentInfo]) -> dict[str, str]:
    channels: dict[str, str] = {}
    for info in infos:
        for pair, channel in info.books:
            try:
                depth = channel_depth(channel)
            except FrameError:  # a malformed name: the feed counts such frames
                continue
            if not sane_pair(pair):  # NUL, or over 255 bytes: the feed counts those too
                continue
            name = common_name(pair)
            known = channels.get(name)
            if known is None or channel_depth(known) < depth:
                channels[name] = channel
    return channels


def _wanted_pairs(depths: dict[str, int], options: ReplayOptions) -> set[str]:
    if not depths:
        raise UsageError("no order book frames in the segments given")
    if options.pairs is None:
        return set(depths)
    missing = sorted(options.pairs - depths.keys())
    if missing:
        raise UsageError(
            f"pair {', '.join(missing)} not found in the segments; recorded: "
            + ", ".join(sorted(depths))
        )
    return set(options.pairs)


def _check_levels(depths: dict[str, int], wanted: set[str], levels: int) -> None:
    for pair in sorted(wanted):
        depth = depths[pair]
        if levels > depth:
            raise UsageError(
                f"--levels {levels} is deeper than every recorded book of {pair} "
                f"(the deepest is book-{depth}); use --levels {depth} or less"
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
