"""``Simulator``: the simulator's server in a background thread, for tests and ``kbook simulate``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kbook.api import URL_PATHS
from kbook.errors import UsageError
from kbook.sim.config import SentFrame, SimulatorConfig
from kbook.sim.faults import Faults
from kbook.sim.playback import load_capture
from kbook.sim.server import SimServer

T = TypeVar("T")


class Simulator:
    """The simulator in a background thread with its own event loop; a context manager.

    ``with Simulator(config) as sim:`` starts it on ``config.host:config.port`` (port 0: a free one)
    and stops it on exit, closing every connection within about two seconds. Everything here may
    be called from any thread. See ``kbook.sim`` for the protocol and ``kbook.sim.faults``.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        capture = load_capture(self.config.capture) if self.config.capture is not None else None
        self._cond = threading.Condition()
        self._generation = 0
        self._server = SimServer(self.config, capture, self._changed)
        self.faults = Faults(self._server, self._call)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Start serving; returns when the port is open. ``UsageError`` if it cannot listen."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="kbook-simulator", daemon=True
        )
        self._thread.start()
        started.wait()
        if self._startup_error is not None:
            self._thread.join()
            error = self._startup_error
            if isinstance(error, OSError):
                where = f"{self.config.host}:{self.config.port}"
                raise UsageError(f"cannot listen on {where}: {error.strerror or error}") from error
            raise error
        return self

    def stop(self) -> None:
        """Close every connection and stop the server (idempotent)."""
        loop, thread, stop_event = self._loop, self._thread, self._stop_event
        if loop is None or thread is None or stop_event is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=5.0)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(started))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, started: threading.Event) -> None:
        try:
            await self._server.start()
        except BaseException as exc:  # reported to start() in the caller's thread
            self._startup_error = exc
            started.set()
            return
        self._stop_event = asyncio.Event()
        started.set()
        await self._stop_event.wait()
        await self._server.stop()
        # Whatever is left (a fault firing, a stall timer's task) must not outlive the loop.
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the simulator's loop and return its result (directly if not running).

        The wait is long: on a machine loaded far beyond its cores the loop may take seconds to
        reach the call, and a fault armed late would make a test fail for the wrong reason."""
        loop = self._loop
        if loop is None or loop.is_closed() or threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=30.0)

    def _changed(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    # -- what tests look at ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """The address to connect to; its path says the API (``kbook.api.api_of_url``)."""
        return f"ws://{self.config.host}:{self._server.port}{URL_PATHS[self._server.dialect.api]}"

    @property
    def sent(self) -> list[SentFrame]:
        """Every frame sent so far, in send order (a copy; the GIL makes the copy atomic)."""
        return list(self._server.sent)

    @property
    def connections(self) -> int:
        """Connections accepted so far (refused handshakes not counted)."""
        return self._server.connections

    @property
    def refused(self) -> int:
        """Connection attempts refused by ``faults.refuse_connections``."""
        return self._server.refused

    @property
    def frames_sent(self) -> int:
        """Frames sent so far, also when ``config.record`` is off."""
        return self._server.frames_sent

    def count(self, kind: str | None = None, connection: int | None = None) -> int:
        """How many frames of ``kind`` (any if None) were sent, on ``connection`` if given."""
        return sum(
            1
            for frame in self._server.sent[:]
            if (kind is None or frame.kind == kind)
            and (connection is None or frame.connection == connection)
        )

    @property
    def playback_finished(self) -> bool:
        """True once a connection has been served the whole capture (playback mode)."""
        return self._server.playbacks_done > 0

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` is true; re-checked whenever the simulator did
        something. Returns True; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                generation = self._generation
            if predicate(self):
                return True
            with self._cond:
                while self._generation == generation:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"simulator: condition not met within {timeout} s")
                    self._cond.wait(remaining)

    def book(self, pair: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The window (asks, bids) of ``pair`` as the last book frame sent for it left it.

        Compare with a client's book only while no updates flow (``pause()``, or after a fault
        that stops them), since the simulator keeps sending meanwhile.
        """
        return self._call(lambda: self._server.window(pair))

    def pause(self) -> None:
        """Stop sending updates on every connection (control frames and heartbeats go on).

        When this returns no further update will be generated; ``book()`` then matches what a
        client holds once it has read everything sent."""
        self._call(lambda: self._server.pause(True))

    def resume(self) -> None:
        self._call(lambda: self._server.pause(False))
