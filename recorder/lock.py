"""One recorder per output folder, pair set and API: an ``flock`` on
``<out>/.kbook-record.<pairs>.lock`` (v1) or ``<out>/.kbook-record.v2.<pairs>.lock`` (v2).

Two recorders writing the same pairs into the same folder would interleave segments and double the
connections to Kraken; cron makes that easy (a run that outlives its slot). A v1 and a v2 recorder
of one pair are two different feeds: their segments share the pair's folder under distinct names,
and readers keep the APIs apart (``kbook.v2.segment_api``), so they may run side by side.
``flock`` is released by the kernel when the process dies, even by ``kill -9``, so a stale lock
file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from kbook.api import Api
from kbook.dialect import dialect_for
from kbook.errors import OutputError, RecordError
from kbook.pairs import file_name


def lock_path(out: Path, pairs: tuple[str, ...], api: str | None = Api.V1) -> Path:
    """The lock file for ``pairs`` (any order, any spelling) of ``api`` under ``out`` (None:
    ``kbook.api.DEFAULT``'s), named by its dialect (``Dialect.lock_prefix``)."""
    names = sorted({file_name(pair) for pair in pairs})
    prefix = dialect_for(api).lock_prefix
    return out / f".kbook-record.{prefix}{'+'.join(names)}.lock"


class OutputLock:
    """An exclusive, non-blocking lock; ``acquire`` raises ``RecordError`` if another run holds it."""

    def __init__(self, out: Path, pairs: tuple[str, ...], api: str | None = Api.V1) -> None:
        self.path = lock_path(out, pairs, api)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            where = exc.filename or self.path
            raise OutputError(f"{where}: cannot write the output folder: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            by = f" (pid {holder})" if holder else ""
            raise RecordError(
                f"{self.path.parent}: another kbook record{by} is already recording these pairs "
                f"here (lock {self.path.name}); stop it or use another --out"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock; the file stays (removing it would race with a recorder starting now)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
