"""Replay recorded Kraken book segments into order book snapshots on a time grid.

Stages, one module each: ``survey`` (a fast first pass over segments) -> ``plan`` (sources: one
book as one recorder delivered it; option checks; tasks: a source's pair-days) -> ``executor``
(the tasks in this process, on a process pool or on Dask) -> ``tasks`` (one task's replay; a
source's tasks joined) -> ``engine`` (segments through ``kbook.lines`` and ``kbook.feed.BookFeed``) ->
``sampler`` (the time grid and staleness; its docstring states the snapshot semantics exactly)
-> ``columns`` (row buffers, schema) -> ``timeline`` (per pair with several sources, the best
valid one per grid time) -> ``parquet`` (the dataset, written atomically; ``update`` rewrites
only changed pair-days). ``api`` is what notebooks and ``kbook replay``
call::

    import replay
    table = replay.replay_table("data/raw", every="1s", levels=10)
    summary = replay.replay_to_dataset("data/raw", "data/snapshots", every="100ms")
    table = replay.read_snapshots("data/snapshots", pair="BTC/USD", start="2026-11-21")

Book deltas, every change of the book in the order applied (``deltas``, its docstring has the
exact semantics)::

    replay.replay_deltas_to_dataset("data/raw", "data/deltas")
    deltas = replay.read_deltas("data/deltas", pair="BTC/USD")

The same deltas as a backtester's files (``backtest_formats``: Tardis CSV, hftbacktest)::

    replay.replay_to_backtest_files("data/raw", "data/hftbacktest", "hftbacktest")
    replay.convert_deltas("data/deltas", "data/tardis", "tardis")  # an existing folder

Trades (recorded with ``--channels book,trade``) are a stage of their own, ``trades``::

    replay.replay_trades_to_dataset("data/raw", "data/trades")
    trades = replay.read_trades("data/trades", pair="BTC/USD")
"""

from replay.api import ReplaySummary, read_snapshots, replay_table, replay_to_dataset
from replay.backtest_formats import convert_deltas, replay_to_backtest_files
from replay.columns import file_schema, level_names, table_schema
from replay.deltas import delta_schema, read_deltas, replay_deltas_to_dataset
from replay.options import ReplayOptions, make_options
from replay.sampler import PairSummary
from replay.trades import TradesSummary, read_trades, replay_trades_to_dataset

__all__ = [
    "PairSummary",
    "TradesSummary",
    "ReplayOptions",
    "ReplaySummary",
    "delta_schema",
    "file_schema",
    "convert_deltas",
    "level_names",
    "make_options",
    "read_deltas",
    "read_snapshots",
    "read_trades",
    "replay_deltas_to_dataset",
    "replay_table",
    "replay_to_backtest_files",
    "replay_to_dataset",
    "replay_trades_to_dataset",
    "table_schema",
]
