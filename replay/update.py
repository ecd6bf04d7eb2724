"""Incremental replay (``kbook replay --update``): rewrite only the partitions whose inputs changed.

A nightly cron job should not replay a month to add a day. The dataset's manifest
(``_kbook_replay.json``) records, for every (pair, UTC day) partition, a fingerprint of what it
was built from, and the survey of every segment read:

- a partition's inputs are the segments of the pair's sources that start before the day ends
  (name, size and modification time: a recording only grows; an ``s3://`` object is named by
  its URI and keeps its modification time in the local copy replay reads), and whether any segment of the
  pair starts after it (a source that goes on changes the day's last rows: they run to the end
  of the day instead of stopping at the last frame);
- ``--update`` surveys only segments it has not seen (same name, size and time), computes every
  partition's fingerprint, and replays only from the first UTC day whose fingerprint changed or
  is new, only the pairs with such a day (``--start`` at that midnight: the replay reads from the
  last segment before it that opens with checkpoints, ``replay.engine.span``). Rows from a
  midnight on are exactly those of a full replay, so the partitions it writes are the bytes a
  full replay writes;
- each changed partition replaces the old one by two renames (the old folder aside, the new one
  in), one at a time; partitions whose fingerprint did not change, or whose new files are the old
  bytes (the day before an appended one usually), are left alone, untouched; the manifest is
  replaced last (write, then rename).

The options must be those the dataset was built with (``--every``, ``--levels``,
``--max-silence``, ``--api``, ``--pair``, ``--start``, ``--end``); anything else is refused, as
is a dataset written before ``--update`` existed: rebuild those with ``--force``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from kbook.errors import OutputError, UsageError
from kbook.pairs import file_name
from kbook.segment import SegmentPath
from kbook.storage import source_name
from kbook.units import DAY, utc_day, utc_text
from replay.columns import file_schema
from replay.options import ReplayOptions
from replay.plan import Stream
from replay.survey import SegmentInfo, facts_info, facts_json

PARTITIONS = "partitions"
SEGMENTS = "surveyed"
SAME_OPTIONS = ("every_ns", "levels", "max_silence_ns", "api", "pair_filter", "start", "end")
"""Manifest keys an ``--update`` run must match."""


def options_json(options: ReplayOptions) -> dict[str, Any]:
    """The options a dataset was built with, as its manifest keeps them."""
    return {
        "every_ns": options.every_ns,
        "levels": options.levels,
        "max_silence_ns": options.max_silence_ns,
        "api": None if options.api is None else str(options.api),
        "pair_filter": None if options.pairs is None else sorted(options.pairs),
        "start": utc_text(options.start_ns) if options.start_ns is not None else None,
        "end": utc_text(options.end_ns) if options.end_ns is not None else None,
        "columns": file_schema(options.levels).names,
    }


def check_options(manifest: dict[str, Any], options: ReplayOptions, out: Path | str) -> None:
    """Refuse an ``--update`` whose options differ from the dataset's, naming the first."""
    if PARTITIONS not in manifest:
        raise UsageError(
            f"{out}: written by a kbook without --update; rebuild it once with --force"
        )
    wanted = options_json(options)
    for key in SAME_OPTIONS:
        if manifest.get(key) != wanted[key]:
            raise UsageError(
                f"{out}: built with {key} {manifest.get(key)!r}, not {wanted[key]!r}; --update "
                "needs the options the dataset was built with (or --force to rebuild it)"
            )
    if manifest.get("columns") != wanted["columns"]:
        raise UsageError(
            f"{out}: its files hold other columns than this kbook writes (exch_ts is new); "
            "rebuild it once with --force"
        )


def fingerprints(streams: Iterable[Stream], options: ReplayOptions) -> dict[str, str]:
    """``"BTC-USD/2026-11-21"`` -> fingerprint of its inputs, for every day with data."""
    by_pair: dict[str, dict[SegmentPath, SegmentInfo]] = {}
    for stream in streams:
        for pair in stream.channels:
            by_pair.setdefault(pair, {}).update((info.path, info) for info in stream.segments)
    prints: dict[str, str] = {}
    for pair, held in by_pair.items():
        infos = [info for info in held.values() if info.first_ns is not None]
        stamps = {info.path: _stamp(info) for info in infos}
        days: set[int] = set()
        for info in infos:
            first = info.first_ns or 0
            last = max(first, info.last_ns or first)
            days.update(range(first // DAY, last // DAY + 1))
        for day in sorted(days):
            start, end = day * DAY, (day + 1) * DAY
            if (options.start_ns is not None and end <= options.start_ns) or (
                options.end_ns is not None and start >= options.end_ns
            ):
                continue
            inputs = sorted(stamps[i.path] for i in infos if (i.first_ns or 0) < end)
            more = any((i.first_ns or 0) >= end for i in infos)
            digest = hashlib.sha256(orjson.dumps([inputs, more])).hexdigest()
            prints[f"{file_name(pair)}/{utc_day(start)}"] = digest
    return prints


def _stamp(info: SegmentInfo) -> list[Any]:
    stat = info.path.stat()
    return [source_name(info.path), stat.st_size, stat.st_mtime_ns]


def changed(old: dict[str, str], new: dict[str, str]) -> dict[str, str]:
    """The partitions of ``new`` whose fingerprint is not the one in ``old``."""
    return {key: value for key, value in new.items() if old.get(key) != value}


def replace_partitions(folder: Path, out: Path, keys: Iterable[str]) -> list[str]:
    """Move each partition ``key`` from ``folder`` into ``out`` (two renames each), unless the
    new files are byte for byte the old ones; a partition the new replay did not write is
    removed. Returns the keys replaced or removed."""
    replaced = []
    for key in sorted(keys):
        pair, day = key.split("/")
        new = folder / f"pair={pair}" / f"date={day}"
        old = out / f"pair={pair}" / f"date={day}"
        if _same_files(new, old) or not (new.exists() or old.exists()):
            continue  # the same bytes, or a day of data that has no row either way
        aside = old.parent / f".date={day}.old-{uuid.uuid4().hex[:8]}"
        try:
            old.parent.mkdir(parents=True, exist_ok=True)
            if old.exists():
                os.rename(old, aside)
            if new.exists():
                os.rename(new, old)
        except OSError as exc:
            if aside.exists() and not old.exists():
                os.rename(aside, old)
            raise OutputError(f"{old}: cannot replace the partition: {exc.strerror}") from exc
        shutil.rmtree(aside, ignore_errors=True)
        replaced.append(key)
    return replaced


def _same_files(new: Path, old: Path) -> bool:
    """Both folders hold the same files with the same bytes."""
    if not new.is_dir() or not old.is_dir():
        return False
    names = sorted(path.name for path in new.iterdir())
    if names != sorted(path.name for path in old.iterdir()):
        return False
    for name in names:
        a, b = new / name, old / name
        if a.stat().st_size != b.stat().st_size or a.read_bytes() != b.read_bytes():
            return False
    return True


def segment_json(info: SegmentInfo) -> dict[str, Any]:
    """What the manifest keeps of a segment's survey (``surveyed``), keyed by its stamp."""
    return {"size": info.size, "mtime_ns": info.path.stat().st_mtime_ns} | facts_json(info)


def known_surveys(
    manifest: dict[str, Any], segments: Iterable[SegmentPath]
) -> dict[SegmentPath, SegmentInfo]:
    """Surveys the manifest holds of ``segments`` that still match them (same size and time,
    facts of a sane shape: ``replay.survey.facts_info``); the manifest names each segment as
    ``source_name`` does (an ``s3://`` URI for an object)."""
    known: dict[SegmentPath, SegmentInfo] = {}
    surveyed = manifest.get(SEGMENTS)
    if type(surveyed) is not dict:
        return known
    for path in segments:
        data = surveyed.get(source_name(path))
        if type(data) is not dict:
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        if stat.st_size != data.get("size") or stat.st_mtime_ns != data.get("mtime_ns"):
            continue
        info = facts_info(path, stat.st_size, data)
        if info is not None:
            known[path] = info
    return known


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable manifest ({exc}); rebuild with --force") from exc
    if type(data) is not dict:
        raise UsageError(f"{path}: not a kbook manifest; rebuild with --force")
    return data


def write_manifest_atomically(path: Path, manifest: dict[str, Any]) -> None:
    """Write beside, then rename over: a reader sees the old manifest or the new one."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        temporary.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the manifest: {exc.strerror}") from exc
