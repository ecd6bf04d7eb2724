"""The survey cache: each segment's survey kept between runs, so no run surveys it twice.

The survey (``replay.survey``) decompresses and scans every segment before the replay reads it
again; a segment never changes once sealed, so its facts are kept and a later run over it (a
replay of the same days with other options, the nightly ``--update`` over a month) reads none of
it but its head and tail. Where and how:

- **Where.** One SQLite file, ``$XDG_CACHE_HOME/kbook/surveys.sqlite`` (``~/.cache/kbook`` when
  ``XDG_CACHE_HOME`` is unset, as the XDG base directory specification says);
  ``KBOOK_SURVEY_CACHE`` names another file, or ``off`` turns the cache off. It holds facts
  about segments, never data: deleting it costs one survey of each segment, nothing else.
- **Key.** A segment as ``kbook.storage.source_name`` names it for good (the ``s3://`` URI of a
  local copy, else the resolved path), its size, its modification time in nanoseconds, and a
  digest of its first and last 4 KiB (so a file rewritten at the same size with its time set
  back is surveyed again). A stamp is taken before the survey and again after it; facts are
  kept only when the two agree (a segment still being written is surveyed again next time).
- **Concurrent runs.** Each run reads in one query and writes in one transaction (SQLite's
  locking makes it all or nothing); a run that finds the file locked for more than a second
  does without the cache this time rather than wait.
- **Damage.** A file SQLite cannot read as a database is replaced by an empty one; a row whose
  facts are not of a shape the survey could have found (``replay.survey.facts_info``) is
  ignored and the segment surveyed again; any other SQLite error turns the cache off for the
  run. The replay never fails because of its cache.
- **Size.** At most ``MAX_ENTRIES`` segments (a few hundred bytes each); beyond that the least
  recently used go first.
- **Trust.** The file and its folder must belong to the user running kbook and be writable by no
  one else (as ``ssh`` treats its keys), else the cache is not used: facts from it decide which
  segments a task reads, so only someone who could rewrite the segments themselves may write
  it. The facts the tasks are cut by (head checkpoints, the connection in force) are checked
  again where a task meets them (``replay.tasks``' join).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import orjson

from kbook.errors import KbookError
from kbook.segment import SegmentPath
from kbook.storage import source_name
from replay.survey import SegmentInfo, facts_info, facts_json

MAX_ENTRIES = 200_000
"""Segments the cache keeps: a year of 20 pairs in hourly segments, about 60 MB."""
VERSION = 1
"""The cache's layout and the meaning of its facts (``PRAGMA user_version``); a file of
another version is emptied, never read."""
ENVIRONMENT = "KBOOK_SURVEY_CACHE"
_EDGE = 4096
"""Bytes of each end of a segment in its digest."""
_BATCH = 500
"""Names per query (SQLite allows 999 parameters in older builds)."""

Stamp = tuple[int, int, str]
"""(size, mtime_ns, digest) of a segment, as the cache keys its facts."""
Survey = Callable[[list[SegmentPath]], list[SegmentInfo]]
"""Surveys segments, one ``SegmentInfo`` each in order (in this process or on workers)."""


def cached_surveys(
    segments: Sequence[SegmentPath],
    survey: Survey,
    known: Mapping[SegmentPath, SegmentInfo] | None = None,
) -> list[SegmentInfo]:
    """The survey of each segment: from ``known`` (an ``--update``'s manifest), else from the
    cache, else by ``survey`` (whose results the cache keeps for the next run)."""
    known = known or {}
    cache = SurveyCache.default()
    try:
        wanted = [path for path in segments if path not in known]
        hits = cache.lookup(wanted)
        todo = [path for path in wanted if path not in hits]
        fresh = dict(zip(todo, survey(todo), strict=True))
        cache.keep(fresh.values(), hits)
    finally:
        cache.close()
    return [known.get(path) or hits.get(path) or fresh[path] for path in segments]


def default_location() -> Path | None:
    """Where the cache lives (see the module docstring), or None when it is off."""
    given = os.environ.get(ENVIRONMENT, "")
    if given == "off":
        return None
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kbook" / "surveys.sqlite"


class SurveyCache:
    """An open survey cache (``lookup``, then ``keep``, then ``close``); one that cannot be used
    answers nothing and keeps nothing."""

    def __init__(self, location: Path | None, limit: int = MAX_ENTRIES) -> None:
        self.location = location
        self.limit = limit
        self._stamps: dict[SegmentPath, Stamp] = {}
        self._db: sqlite3.Connection | None = None
        if location is not None:
            with contextlib.suppress(OSError, sqlite3.Error):
                self._db = _open(location)

    @classmethod
    def default(cls) -> SurveyCache:
        return cls(default_location())

    @property
    def usable(self) -> bool:
        return self._db is not None

    def lookup(self, segments: Sequence[SegmentPath]) -> dict[SegmentPath, SegmentInfo]:
        """The cached surveys of those ``segments`` whose stamp is the one they were kept
        under (each segment stamped now: ``keep`` compares)."""
        if self._db is None or not segments:
            return {}
        names: dict[str, SegmentPath] = {}
        for path in segments:
            stamp = _stamp(path)
            if stamp is not None:
                self._stamps[path] = stamp
                names[source_name(path)] = path
        found: dict[SegmentPath, SegmentInfo] = {}
        try:
            listed = list(names)
            for first in range(0, len(listed), _BATCH):
                batch = listed[first : first + _BATCH]
                rows = self._db.execute(
                    "SELECT name, size, mtime_ns, digest, facts FROM survey WHERE name IN "
                    f"({','.join('?' * len(batch))})",
                    batch,
                )
                for name, size, mtime_ns, digest, facts in rows:
                    path = names[name]
                    if (size, mtime_ns, digest) != self._stamps[path]:
                        continue
                    info = facts_info(path, size, _loads(facts))
                    if info is not None:
                        found[path] = info
        except sqlite3.Error:
            self.close()
            return {}
        return found

    def keep(self, infos: Iterable[SegmentInfo], used: Iterable[SegmentPath] = ()) -> None:
        """Keep the surveys of segments unchanged since ``lookup`` stamped them, mark the
        segments ``used`` as just used, and drop the least recently used beyond ``limit``."""
        if self._db is None:
            return
        now = time.time_ns()
        rows = []
        for info in infos:
            before = self._stamps.get(info.path)
            if before is None or _stamp(info.path) != before or before[0] != info.size:
                continue
            facts = orjson.dumps(facts_json(info))
            rows.append((source_name(info.path), *before, facts, now))
        touched = [(now, source_name(path)) for path in used]
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO survey (name, size, mtime_ns, digest, facts, used) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.executemany("UPDATE survey SET used = ? WHERE name = ?", touched)
                if rows:
                    self._db.execute(
                        "DELETE FROM survey WHERE name IN (SELECT name FROM survey "
                        "ORDER BY used DESC LIMIT -1 OFFSET ?)",
                        (self.limit,),
                    )
        except sqlite3.Error:
            self.close()

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def _open(location: Path) -> sqlite3.Connection | None:
    """The cache's database, made if missing, emptied if of another version, replaced if SQLite
    cannot read it; None when it may not be trusted (``_private``) or is locked."""
    location.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private(location.parent) or (location.exists() and not _private(location)):
        return None
    try:
        return _connect(location)
    except sqlite3.OperationalError:  # locked, read-only, ...: this run does without
        return None
    except sqlite3.DatabaseError:  # not a database, or a damaged one: start afresh
        location.unlink(missing_ok=True)
        return _connect(location)


def _connect(location: Path) -> sqlite3.Connection:
    fresh = not location.exists()
    db = sqlite3.connect(location, timeout=1.0, isolation_level=None)
    try:
        if fresh:
            os.chmod(location, 0o600)
        db.execute("BEGIN IMMEDIATE")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version != VERSION:
            db.execute("DROP TABLE IF EXISTS survey")
            db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS survey (name TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, digest TEXT, facts BLOB, used INTEGER)"
        )
        db.execute("COMMIT")
        db.isolation_level = "DEFERRED"  # ``with db`` is one transaction from here on
    except BaseException:
        db.close()
        raise
    return db


def _private(path: Path) -> bool:
    """``path`` belongs to this user and no one else may write it."""
    info = path.lstat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _stamp(path: SegmentPath) -> Stamp | None:
    """``(size, mtime_ns, digest of the first and last 4 KiB)``, or None when unreadable (a
    local file or an ``s3://`` object alike: two small reads)."""
    try:
        info = path.stat()
        with path.open("rb", buffering=0) as fh:
            digest = hashlib.blake2b(fh.read(_EDGE), digest_size=16)
            if info.st_size > _EDGE:
                fh.seek(max(_EDGE, info.st_size - _EDGE))
                digest.update(fh.read(_EDGE))
    except (OSError, KbookError):
        return None
    return info.st_size, info.st_mtime_ns, digest.hexdigest()


def _loads(facts: object) -> object:
    try:
        return orjson.loads(facts) if isinstance(facts, bytes | str) else None
    except orjson.JSONDecodeError:
        return None
