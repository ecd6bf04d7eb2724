"""One recorder per pair, API and output folder: ``flock`` on small lock files under ``<out>``.

Two recorders writing one pair into one folder would interleave segments and double the
connections to Kraken; cron makes that easy (a run that outlives its slot). So a run takes:

- one lock per pair, ``<out>/.kbook-record.BTC-USD.lock`` (v1) or
  ``<out>/.kbook-record.v2.BTC-USD.lock`` (v2): a second run sharing *any* pair with this one is
  refused, whatever its other pairs (overlapping pair sets would write one pair twice);
- for several pairs, first a lock named by a hash of the pair set,
  ``<out>/.kbook-record.set-1f0c...e2.lock`` (v2: ``.kbook-record.v2.set-...``), so that the same
  command started twice is refused with the simplest message. The name stays short for any
  number of pairs (joining 300 pair names would pass the file name limit).

A v1 and a v2 recorder of one pair are two different feeds: their segments share the pair's folder
under distinct names, and readers keep the APIs apart (``kbook.v2.segment_api``), so they may run
side by side. ``flock`` is released by the kernel when the process dies, even by ``kill -9``, so a
stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from kbook.api import Api
from kbook.dialect import dialect_for
from kbook.errors import OutputError, RecordError
from kbook.pairs import file_name


def _prefix(out: Path, api: str | None) -> str:
    """Named by the API's dialect (``Dialect.lock_prefix``; v1's names are the ones older
    recorders take); None is ``kbook.api.DEFAULT``."""
    return str(out / f".kbook-record.{dialect_for(api).lock_prefix}")


def pair_lock_path(out: Path, pair: str, api: str | None = Api.V1) -> Path:
    """The lock file of one pair (any spelling) of ``api`` under ``out``."""
    return Path(f"{_prefix(out, api)}{file_name(pair)}.lock")


def lock_path(out: Path, pairs: tuple[str, ...], api: str | None = Api.V1) -> Path:
    """The first lock a run of ``pairs`` (any order, any spelling) of ``api`` takes under ``out``:
    the pair's lock for one pair, the pair set's otherwise."""
    names = sorted({file_name(pair) for pair in pairs})
    if len(names) == 1:
        return Path(f"{_prefix(out, api)}{names[0]}.lock")
    digest = hashlib.sha256("+".join(names).encode()).hexdigest()[:16]
    return Path(f"{_prefix(out, api)}set-{digest}.lock")


class OutputLock:
    """Exclusive, non-blocking locks; ``acquire`` raises ``RecordError`` if another run holds one."""

    def __init__(self, out: Path, pairs: tuple[str, ...], api: str | None = Api.V1) -> None:
        self.path = lock_path(out, pairs, api)
        names = sorted({file_name(pair) for pair in pairs})
        self.paths = [self.path] + (
            [Path(f"{_prefix(out, api)}{name}.lock") for name in names] if len(names) > 1 else []
        )
        self._fds: list[int] = []

    def acquire(self) -> OutputLock:
        try:
            for path in self.paths:
                self._fds.append(_take(path, first=path == self.path))
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Unlock; the files stay (removing one would race with a recorder starting now)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _take(path: Path, first: bool) -> int:
    """Lock ``path`` and write our pid into it; the error names the holder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        where = exc.filename or path
        raise OutputError(f"{where}: cannot write the output folder: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        by = f" (pid {holder})" if holder else ""
        what = "these pairs" if first else f"{path.name.split('.')[-2]}, one of these pairs,"
        raise RecordError(
            f"{path.parent}: another kbook record{by} is already recording {what} "
            f"here (lock {path.name}); stop it or use another --out"
        ) from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
