"""Where replay's units of work run: a local process pool, or a Dask cluster.

Both are a ``concurrent.futures.Executor`` to ``replay.parallel``, which hands the units over
and joins their results in plan order, so the output is byte-identical whatever runs them.

``local``: a ``ProcessPoolExecutor`` of ``workers - 1`` fresh interpreters; this process works
too. ``dask``: a ``distributed.Client`` on a ``LocalCluster`` of ``workers`` processes (one
thread each, no dashboard), or on the cluster whose scheduler is ``scheduler``
(``tcp://host:8786``); units go to it through ``Client.get_executor`` with one retry each, and
this process only plans, hands over and joins. A unit that fails twice (its worker died twice,
or it raised twice) fails the replay, which then publishes nothing. Dask is an optional extra
(``pip install 'kbook[dask]'``), imported only here and only for ``engine="dask"``.

A cluster's workers must see the same paths as this process: the segments (or their local copy
made by ``kbook.storage``) and the dataset's temporary folder. On one machine they do; across
machines, put both on a shared file system (see README, On a cluster).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kbook.errors import UsageError

ENGINES = ("local", "dask")
RETRIES = 1
"""Times a failed unit is submitted again before the replay fails."""


@dataclass(frozen=True, slots=True)
class Pool:
    """An executor for units, how many run at once on it, and whether this process works too."""

    executor: Executor
    slots: int
    here: bool


def parse_engine(engine: str, scheduler: str | None = None) -> str:
    """``engine`` checked, with ``scheduler`` (which only Dask takes)."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: give one of {', '.join(ENGINES)}")
    if scheduler is not None and engine != "dask":
        raise UsageError("--scheduler is for --engine dask")
    return engine


@contextmanager
def open_pool(engine: str, workers: int, scheduler: str | None = None) -> Iterator[Pool]:
    """The executor of ``engine``, shut down when the block ends (see the module docstring)."""
    if parse_engine(engine, scheduler) == "local":
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers - 1, mp_context=context) as pool:
            yield Pool(pool, workers - 1, True)
        return
    with _dask_client(workers, scheduler) as client:
        threads = sum(client.nthreads().values()) or 1
        yield Pool(client.get_executor(retries=RETRIES, pure=False), threads, False)


@contextmanager
def _dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError(
            "--engine dask needs Dask distributed: pip install 'kbook[dask]'"
        ) from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"--scheduler {scheduler}: cannot reach it ({exc})") from None
        with client:
            yield client
        return
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, Client(cluster) as client:
        yield client
