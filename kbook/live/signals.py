"""SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGQUIT end a live session (a recording, a live watch)
cleanly; a second one ends the process at once.

A signal becomes a request to stop, never an exception: a ``KeyboardInterrupt`` raised inside the
session's wait on its inbox (``threading.Condition.wait``) can leave the condition's lock
unacquired, and leaving the ``with`` then fails with "cannot release un-acquired lock".

SIGHUP (the terminal went away), SIGUSR1 and SIGQUIT would otherwise kill the process without
closing its segments; they are taken as a request to stop like SIGTERM (``STOP_SIGNALS``).
The first signal only asks the recorder to stop: the session's clock notices within one tick, records
what already arrived, and closes every segment (flush, fsync, rename), so ``kill`` from cron or
systemd loses nothing. If closing hangs (a stuck disk), a second signal exits immediately; the
``.partial`` files then hold everything up to their last flush.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol


class Stoppable(Protocol):
    @property
    def stopping(self) -> bool: ...

    def stop(self, reason: str = "stopped") -> None: ...


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT)


@contextmanager
def stop_on_signals(
    target: Stoppable, signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """Route ``signals`` to ``target.stop`` while inside; restore the old handlers after.

    Does nothing outside the main thread, where Python cannot install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if target.stopping:
            os._exit(128 + signum)
        target.stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
