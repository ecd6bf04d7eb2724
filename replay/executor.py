"""Where replay's tasks run: in this process, on a local process pool, or on a Dask cluster.

One seam for the three: ``Executor.run(fn, items, done, describe)`` runs ``fn`` on every item and
calls ``done(index, result)`` here, in this thread, as results come (``as_completed``), so the
caller puts each in its place and the output is the same whatever ran the tasks and in whatever
order they finished.

``local`` with one worker: every task runs here, in order (no pool to start). ``local`` with
several: a ``concurrent.futures.ProcessPoolExecutor`` of ``workers`` fresh interpreters
(``spawn``: a worker shares no state with this process). ``dask``: a ``distributed.Client`` on a
``LocalCluster`` of ``workers`` processes (one thread each, no dashboard, on 127.0.0.1), or on the cluster
whose scheduler is ``scheduler`` (``tcp://host:8786``); each task is submitted with one retry.

A ``LocalCluster`` costs about a second of wall time to start (a process per worker, each
importing Dask, then kbook and pyarrow): it starts in the background (``Executor.starting``)
while this process surveys and plans, then runs the first task itself, and the next ones until
the cluster is up, when the rest go to it at once. Its workers import what a task needs as they
start (this module is their ``preload``, ``WORKER_CONFIG``), not on their first task. A task
run here fails as one on a worker does (a ``TaskError`` naming it), without the retry.

A task that fails (raises, or its worker dies) on a pool, or fails twice on Dask, stops the run
with a ``TaskError`` naming it (``describe``); errors of kbook's own (a ``KbookError``: a bad
file, too many rows) pass as they are. The tasks not started are cancelled, and the caller
publishes nothing. Dask is an optional extra (``pip install 'kbook[dask]'``), imported only here
and only for ``engine="dask"``.

A cluster's workers must reach what this process names: ``s3://`` segments and an ``s3://``
dataset's temporary prefix they reach with their own client (``kbook.storage``: no shared file
system); local segments and a local dataset's temporary folder they reach at the same paths,
which on one machine they do, and across machines only on a shared file system (see README,
On a cluster).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

from kbook.errors import KbookError, TaskError, UsageError

ENGINES = ("local", "dask")
RETRIES = 1
"""Times a failed task is submitted again on Dask before the replay fails."""

WORKER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": None},
    "distributed.worker.preload": ["replay.executor"],
}
"""Dask settings of the workers of kbook's ``LocalCluster``: what made a task 1.2-1.6x slower
on a worker than in one process (measured task by task: CPU time and wall time inside the task).

A worker's event loop shares the GIL with the thread that replays. Every time the loop wakes
it must take the GIL from the replay, which gives it up only after the 5 ms switch interval and
must then wait to be scheduled again: on a busy machine, a few milliseconds each time. By
default it wakes every 20 ms to measure its own lag (``tick``), every 100 ms to read the
process's memory, every 500 ms for system metrics, and every 10 ms for the statistical
profiler (for the dashboard): some 250 GIL handovers a second, which cost a third of the wall
time under load. Less often suffices for a replay (tasks of seconds to minutes; a worker still
notices within a second when it runs short of memory): some 15 a second remain.

The nanny also starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes the
allocator give freed memory back to the system at once and fault it in again on the next
allocation: 50x the page faults, 5-10% more CPU time for the replay's many short-lived
objects. Left unset, the worker allocates as this process does (unless this process's own
environment sets it: Dask's nannies put it there, so a cluster with Dask's settings started
earlier in this process leaves it behind).

The ``preload`` has each worker import this module as it starts, before it joins the cluster:
with it ``replay`` (the engine, the native core, pyarrow: what unpickling a task would import),
some 0.4 s of CPU that the first task would otherwise wait for while the cluster is already up.

A cluster started elsewhere (``--scheduler``) runs with its own settings: see README, On a
cluster, for the same settings in a Dask config file."""

Item = TypeVar("Item")
Result = TypeVar("Result")


def parse_engine(engine: str, scheduler: str | None = None) -> str:
    """``engine`` checked, with ``scheduler`` (which only Dask takes)."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: give one of {', '.join(ENGINES)}")
    if scheduler is not None and engine != "dask":
        raise UsageError("--scheduler is for --engine dask")
    return engine


class Executor:
    """Runs tasks here (no ``pool``, no ``client``), on a process ``pool``, or on a Dask
    ``client``, given or still ``starting`` (see the module docstring)."""

    def __init__(
        self,
        pool: ProcessPoolExecutor | None = None,
        client: Any = None,
        workers: int = 1,
        starting: Future[Any] | None = None,
    ) -> None:
        self.pool = pool
        self._client = client
        self.workers = workers
        """The pool's size."""
        self.starting = starting
        """The client of kbook's own ``LocalCluster``, started in the background for this run
        (None for a pool, or a cluster started elsewhere)."""

    @property
    def client(self) -> Any:
        """The Dask client (None without Dask); waits for a ``LocalCluster`` still starting."""
        if self._client is None and self.starting is not None:
            self._client = self.starting.result()
        return self._client

    @property
    def inline(self) -> bool:
        """True when tasks run in this process, one after another."""
        return self.pool is None and self._client is None and self.starting is None

    @property
    def slots(self) -> int:
        """How many tasks run at once."""
        if self.client is not None:
            return sum(self.client.nthreads().values()) or 1
        return self.workers

    def run(
        self,
        fn: Callable[[Item], Result],
        items: Sequence[Item],
        done: Callable[[int, Result], None],
        describe: Callable[[Item], str],
    ) -> None:
        """``fn`` on every item; ``done(index, result)`` here for each, as results come (none:
        a cluster still starting is not waited for)."""
        if not items:
            return
        if self.inline:
            for index, item in enumerate(items):
                done(index, fn(item))
            return
        if self._client is None and self.starting is not None:
            self._run_while_starting(fn, items, done, describe)
            return
        if self.client is not None:
            self._collect(self._submit(fn, items, 0), items, 0, done, describe)
            return
        assert self.pool is not None
        futures: dict[Future[Result], int] = {
            self.pool.submit(fn, item): index for index, item in enumerate(items)
        }
        try:
            for future in as_completed(futures):
                index = futures[future]
                done(index, _result(future, items[index], describe))
        finally:
            for future in futures:
                future.cancel()

    def _run_while_starting(
        self,
        fn: Callable[[Item], Result],
        items: Sequence[Item],
        done: Callable[[int, Result], None],
        describe: Callable[[Item], str],
    ) -> None:
        """``run`` while kbook's own cluster starts: this process runs the first item, and the
        next ones until the cluster is up; then a thread that waited for it hands it the rest
        at once (no worker waits for the item this process is running to end)."""
        assert self.starting is not None
        starting = self.starting
        lock = threading.Lock()
        taken = 1
        """Items ``[:taken]`` are this process's (the first one always)."""

        def hand_over() -> tuple[int, list[Any]]:
            nonlocal taken
            client = starting.result()
            with lock:
                first, taken = taken, len(items)
            return first, self._submit(fn, items, first, client)

        with ThreadPoolExecutor(1, thread_name_prefix="kbook-hand-over") as mover:
            moved = mover.submit(hand_over)
            try:
                index = 0
                while True:
                    done(index, _run_here(fn, items[index], describe))
                    with lock:
                        if taken == len(items):
                            break
                        index, taken = taken, taken + 1
            except BaseException:
                with lock:
                    taken = len(items)  # the cluster gets none, or cancels what it got
                with contextlib.suppress(Exception):
                    starting.result().cancel(moved.result()[1])
                raise
            first, futures = moved.result()
        self._client = starting.result()
        self._collect(futures, items, first, done, describe)

    def _submit(
        self, fn: Callable[[Item], Result], items: Sequence[Item], first: int, client: Any = None
    ) -> list[Any]:
        """Dask futures of ``fn`` on ``items[first:]``."""
        client = client if client is not None else self.client
        return [client.submit(fn, item, retries=RETRIES, pure=False) for item in items[first:]]

    def _collect(
        self,
        futures: list[Any],
        items: Sequence[Item],
        first: int,
        done: Callable[[int, Result], None],
        describe: Callable[[Item], str],
    ) -> None:
        """``done`` for each of the ``futures`` of ``items[first:]``, as they finish."""
        from distributed import as_completed as dask_completed

        index_of = {future.key: index for index, future in enumerate(futures, first)}
        try:
            for future in dask_completed(futures):
                index = index_of[future.key]
                done(index, _result(future, items[index], describe))
        finally:
            self.client.cancel(futures)


def _run_here(fn: Callable[[Item], Result], item: Item, describe: Callable[[Item], str]) -> Result:
    """``fn(item)`` in this process; its failure as a ``TaskError`` naming it, as a worker's."""
    try:
        return fn(item)
    except KbookError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a task is reported the same way
        raise TaskError(f"{describe(item)} failed: {_why(exc)}") from exc


def _result(future: Any, item: Item, describe: Callable[[Item], str]) -> Any:
    """The task's result; its failure as a ``TaskError`` naming it (a ``KbookError`` as is)."""
    try:
        return future.result()
    except KbookError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a task is reported the same way
        raise TaskError(f"{describe(item)} failed: {_why(exc)}") from exc


def _why(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


@contextmanager
def open_executor(engine: str, workers: int, scheduler: str | None = None) -> Iterator[Executor]:
    """The executor of ``engine`` for ``workers``, shut down when the block ends (see the
    module docstring)."""
    if parse_engine(engine, scheduler) == "local":
        if workers <= 1:
            yield Executor()
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield Executor(pool=pool, workers=workers)
        return
    try:
        import distributed  # noqa: F401 - here, to say what to install before anything starts
    except ImportError:
        raise UsageError(
            "--engine dask needs Dask distributed: pip install 'kbook[dask]'"
        ) from None
    if scheduler is not None:
        with _join_cluster(scheduler) as client:
            yield Executor(client=client)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="kbook-cluster") as starter, ExitStack() as stop:
        starting = starter.submit(_start_local_cluster, workers, stop)
        try:
            yield Executor(starting=starting)
        finally:
            # A run that ended before it needed the cluster (an error in the plan, a signal)
            # waits for it to be up, to stop it: ``stop`` then closes what it opened.
            starting.exception()


@contextmanager
def _join_cluster(scheduler: str) -> Iterator[Any]:
    """A client of the cluster whose scheduler is at ``scheduler``."""
    from distributed import Client

    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"--scheduler {scheduler}: cannot reach it ({exc})") from None
    with client:
        yield client


def _start_local_cluster(workers: int, stop: ExitStack) -> Any:
    """A client of a new ``LocalCluster`` of ``workers`` (run in the background: see the module
    docstring); ``stop`` closes both."""
    import dask
    from distributed import Client, LocalCluster

    # On the loopback interface only, its HTTP server (health, metrics) on a free port rather
    # than 8787; its nannies' warnings (a worker restarted after a crash or a signal) and the
    # errors of connections it closes while a replay stopped by a signal tears it down would be
    # lines beside kbook's own: a task's failure is reported by its future, once. Dask's own
    # silence ends as the cluster's close ends; a close cut short by a signal leaves its event
    # loop closing the nannies after that, and they say so. So this silence lasts as long as
    # the process: Dask's log lines below CRITICAL stay quiet once kbook has run a cluster of
    # its own. The workers run with ``WORKER_CONFIG`` (see there).
    for handler in logging.getLogger("distributed").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL)
    with dask.config.set(WORKER_CONFIG):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,
        )
    stop.callback(cluster.close)
    client = Client(cluster)
    stop.callback(client.close)  # not ``with client``: that is for the thread that entered it
    return client
