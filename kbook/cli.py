"""The ``kbook`` command line: a thin layer that parses options and calls the library.

Every command turns a ``KbookError`` into one line on stderr (``kbook: error: ...``) and that error's
exit code, in one place (``main``). Ctrl+C exits 130 unless a command handles it itself. Set
``KBOOK_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import orjson
import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from kbook import __version__
from kbook.api import Api
from kbook.errors import KbookError

if TYPE_CHECKING:  # typer >= 0.29 vendors click as typer._click; these are its types
    from rich.console import Console
    from typer._click import Context, HelpFormatter

    from kbook.coverage import PairCoverage
    from recorder.upload import Retention


class _Command(TyperCommand):
    """Plain help (no Rich markup, which ate ``[default: ...]``), arguments as ``PAIR...``
    and options as ``--depth DEPTH`` rather than typer's ``{pairs}... <list[str]>``."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                label = _label(param)
                pieces.append(label if param.required else f"[{label}]")
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                arguments.append((_label(param), record[1]))
            elif isinstance(param, TyperOption):
                names = ", ".join(sorted(param.opts, key=len))
                if param.secondary_opts:
                    names += " / " + ", ".join(param.secondary_opts)
                shown = names if param.is_flag else f"{names} {_label(param)}"
                options.append((shown, record[1]))
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _label(param: TyperArgument | TyperOption) -> str:
    """``PAIR...`` for an argument, ``DEPTH`` for an option's value: the metavar, else the name."""
    label = param.metavar or (param.name or "value").upper()
    return f"{label}..." if isinstance(param, TyperArgument) and param.nargs != 1 else label


app = typer.Typer(
    name="kbook",
    help="Record the Kraken WebSocket order book losslessly; replay it into Parquet snapshots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from kbook.lines import core_description

        typer.echo(f"kbook {__version__} ({core_description()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Record the Kraken WebSocket order book losslessly; replay it into Parquet snapshots."""


def _print_coverage(console: Console, coverage: dict[str, PairCoverage], by_day: bool) -> None:
    """``kbook verify --coverage``'s tables: per pair and source, and per day with ``--by-day``."""
    from rich.table import Table

    from kbook.units import utc_text

    table = Table(title="coverage (replay's timeline)")
    for column in ("pair", "source", "valid (h)", "invalid (s)", "invalid spans (UTC)"):
        table.add_column(column, justify="left" if column in ("pair", "source") else "right")
    for pair, c in sorted(coverage.items()):
        spans = [
            f"{utc_text(a, 0)}..{utc_text(b, 0)} {cause}" for a, b, cause in c.invalid_spans[:3]
        ]
        if len(c.invalid_spans) > 3:
            spans.append(f"+{len(c.invalid_spans) - 3} more")
        table.add_row(
            pair, "all", f"{c.valid_ns / 3.6e12:.3f}", f"{c.invalid_ns / 1e9:.1f}", "\n".join(spans)
        )
        for label, valid_ns in sorted(c.sources.items()):
            table.add_row("", label, f"{valid_ns / 3.6e12:.3f}", "", "")
    console.print(table)
    if not by_day:
        return
    days = Table(title="coverage per UTC day")
    for column in ("pair", "day", "valid (h)", "invalid (s)", "invalid by cause (s)"):
        days.add_column(column, justify="left" if column in ("pair", "day") else "right")
    for pair, c in sorted(coverage.items()):
        for day, d in sorted(c.days.items()):
            causes = ", ".join(f"{cause} {ns / 1e9:.1f}" for cause, ns in sorted(d.causes.items()))
            days.add_row(
                pair, day, f"{d.valid_ns / 3.6e12:.3f}", f"{d.invalid_ns / 1e9:.1f}", causes
            )
    console.print(days)


@app.command(cls=_Command)
def verify(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH",
            help="Segment files, or folders searched for *.jsonl.zst; s3://bucket/prefix too.",
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write the counts as Prometheus metrics to this file (*.prom). "
            "[default: none]",
        ),
    ] = None,
    coverage: Annotated[
        bool,
        typer.Option(
            "--coverage",
            help="Also measure each pair's valid and invalid time (and each source's) on "
            "replay's timeline, with replay's rules.",
        ),
    ] = False,
    by_day: Annotated[
        bool, typer.Option("--by-day", help="Coverage per UTC day too (implies --coverage).")
    ] = False,
    every: Annotated[
        str, typer.Option(metavar="TIME", help="Coverage grid interval, as replay's --every.")
    ] = "1s",
    max_silence: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Coverage: a source's book is stale once it has received nothing this long.",
        ),
    ] = "10s",
) -> None:
    """Check every checksum in recorded segments; exit 1 if any failed, 2 for unusable input."""
    import time

    from rich.console import Console
    from rich.table import Table

    from kbook.units import utc_text
    from kbook.verify import verify_paths

    started = time.monotonic()
    report = verify_paths(paths)
    if coverage or by_day:
        from kbook.coverage import measure_coverage

        report.coverage = measure_coverage(report.files, every, max_silence)
    if metrics_file is not None:
        from kbook import job_metrics

        job_metrics.write(
            metrics_file, job_metrics.verify_metrics(report, time.monotonic() - started)
        )
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        table = Table(title=f"kbook verify: {len(report.files)} segment(s)")
        names = ("pair", "wire", "api", "frames", "snapshots", "updates", "ok", "failed", "dropped")
        for column in names:
            left = column in ("pair", "wire", "api")
            table.add_column(column, justify="left" if left else "right")
        for column in ("first receive (UTC)", "last receive (UTC)", "invalid"):
            table.add_column(column)
        for pair, s in sorted(report.pairs.items()):
            table.add_row(
                pair,
                ", ".join(sorted(report.wires.get(pair, ()))),
                report.apis.get(pair, Api.V1),  # segments that name no API are v1
                str(s.frames),
                str(s.snapshots + s.checkpoints),
                str(s.updates),
                str(s.checksums_ok),
                str(s.checksums_failed),
                str(s.dropped),
                utc_text(s.first_ns, 3),
                utc_text(s.last_ns, 3),
                f"{s.invalid_ns / 1e9:.3f} s",
            )
        console = Console(width=max(Console().width, 140))
        console.print(table)
        if report.coverage is not None:
            _print_coverage(console, report.coverage, by_day)
        console.print(
            f"checksums ok: {report.checksums_ok}, failed: {report.checksums_failed}"
            + (f", other channels: {report.feed.other_channel_frames}")
            + (f", malformed frames: {report.feed.malformed_frames}")
        )
        for pair, t in sorted(report.trades.pairs.items()):
            repeated = f" ({t.repeated} repeated after reconnects)" if t.repeated else ""
            console.print(f"trades {pair}: {t.kept}{repeated}")
    for problem in [*report.problems, *report.trade_gaps()]:
        typer.echo(f"kbook: warning: {problem}", err=True)
    raise typer.Exit(1 if report.checksums_failed else 0)


@app.command(cls=_Command)
def record(
    pairs: Annotated[
        list[str],
        typer.Argument(
            metavar="PAIR", help="Pairs to record, e.g. BTC/USD ETH/USD (one connection)."
        ),
    ],
    depth: Annotated[
        int, typer.Option(help="Book depth: 10, 25, 100, 500 or 1000 levels per side.")
    ] = 10,
    channels: Annotated[
        str,
        typer.Option(
            help="Kraken channels to record for every pair, comma-separated: book, trade or "
            "book,trade (trades go into the pair's segments beside its book)."
        ),
    ] = "book",
    out: Annotated[
        Path, typer.Option(help="Output folder; segments go to OUT/raw/PAIR/DATE/.")
    ] = Path("data"),
    api: Annotated[
        str | None,
        typer.Option(
            help="Kraken WebSocket API: v2, or v1 (frozen by Kraken); one API per run. "
            "[default: the one --url says (a path ending in /v2 is v2, else v1), else v2]"
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Kraken WebSocket address [default: wss://ws.kraken.com/v2, or "
            "wss://ws.kraken.com with --api v1]."
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Stop cleanly after this long (e.g. 55m, 1h, 7d). [default: until stopped]",
        ),
    ] = None,
    rotate: Annotated[
        str,
        typer.Option(metavar="TIME", help="Start a new segment every period, on UTC boundaries."),
    ] = "1h",
    max_segment_mb: Annotated[
        float | None,
        typer.Option(
            metavar="MB",
            help="Also start a new segment at this compressed size (MB). [default: no size limit]",
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Failed connection attempts in a row before giving up (exit 1); "
            "0: never give up, backing off up to 60 s between attempts.",
        ),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No status lines; warnings only.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            help="Serve Prometheus metrics on this port at /metrics (0: any free port). "
            "[default: no server]",
        ),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address the metrics server listens on.")
    ] = "127.0.0.1",
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Rewrite this file atomically every second with the metrics "
            "(node_exporter's textfile format; name it *.prom). [default: none]",
        ),
    ] = None,
    upload: Annotated[
        str | None,
        typer.Option(
            metavar="DESTINATION",
            help="Upload each closed segment to s3://bucket/prefix (or a folder), verified, "
            "beside recording; credentials and endpoint from the AWS variables. "
            "[default: no upload]",
        ),
    ] = None,
    keep_local: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="With --upload: delete a local segment this long after it closed, once uploaded "
            "(e.g. 7d, 0s). [default: kept forever]",
        ),
    ] = None,
    min_free: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="With --upload: below this free space (e.g. 2GB) delete the oldest uploaded "
            "segments; never one not uploaded. [default: no limit]",
        ),
    ] = None,
) -> None:
    """Record the order book of PAIRS into zstd segments until stopped (SIGINT/SIGTERM: exit 0)."""
    from kbook.api import parse_channels
    from kbook.errors import UsageError
    from kbook.units import parse_duration, utc_text
    from recorder import RecordConfig, Recorder, stop_on_signals
    from recorder.metrics import Metrics
    from recorder.monitor import Monitor
    from recorder.status import human_bytes
    from recorder.upload import Uploader

    if retries < 0:
        raise UsageError(f"--retries {retries}: give a number of attempts, or 0 to never give up")

    if max_segment_mb is not None and not (math.isfinite(max_segment_mb) and max_segment_mb > 0):
        raise UsageError(f"--max-segment-mb {max_segment_mb}: must be a positive number of MB")
    config = RecordConfig(
        pairs=tuple(pairs),
        depth=depth,
        out=out,
        url=url,
        api=api,
        channels=parse_channels(channels),
        duration_ns=parse_duration(duration, "--duration") if duration is not None else None,
        rotate_ns=parse_duration(rotate, "--rotate"),
        max_segment_bytes=round(max_segment_mb * 1e6) if max_segment_mb is not None else None,
        connect_retries=retries or None,
        quiet=quiet,
        arguments=tuple(sys.argv[1:]),
    )
    retention = _retention(keep_local, min_free, upload)
    metrics = Metrics(out) if metrics_port is not None or metrics_file is not None else None
    monitor = Monitor(metrics, metrics_file)
    recorder = Recorder(config, monitor=monitor)
    uploader = None
    try:
        if upload is not None:
            uploader = Uploader(out / "raw", upload, retention, warn=recorder.reporter.warning)
            monitor.uploader = uploader
            if metrics is not None:
                metrics.upload = uploader
            uploader.start()
        if metrics is not None and metrics_port is not None:
            port = metrics.serve(metrics_addr, metrics_port)
            recorder.reporter.note(f"metrics on http://{metrics_addr}:{port}/metrics")
        with stop_on_signals(recorder):
            summary = recorder.run()
    finally:
        if uploader is not None:
            uploader.stop(drain=True)
        if metrics is not None:
            metrics.close()
    if not quiet:
        typer.echo(
            f"{utc_text(summary.ended_ns, 0)} kbook record: stopped ({summary.stop_reason}): "
            f"{summary.frames} frames, "
            f"{len(summary.segments)} segment(s), {human_bytes(summary.bytes_written)}, "
            f"{summary.reconnects} reconnect(s)",
            err=True,
        )


@app.command(cls=_Command)
def replay(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATH",
            help="Segment files, or folders searched for *.jsonl.zst; s3://bucket/prefix too. "
            "[default: data/raw]",
        ),
    ] = None,
    pair: Annotated[
        list[str] | None,
        typer.Option(
            "--pair", help="Pair to replay, BTC/USD or XBT/USD; repeat it. [default: every pair]"
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="First row time, ISO 8601 (naive = UTC), inclusive. [default: the first book]",
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Rows stop before this time (exclusive). [default: after the last book event]",
        ),
    ] = None,
    every: Annotated[
        str,
        typer.Option(
            metavar="TIME",
            help="Grid interval: 100ms, 1s, 5s, 1m, 1h, ...; or change: a row whenever the top "
            "--levels changed (README, For backtests).",
        ),
    ] = "1s",
    levels: Annotated[
        int, typer.Option(help="Levels per side in each row, up to the recorded depth.")
    ] = 10,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Dataset folder to create, or s3://bucket/prefix "
            "[default: data/snapshots; with --trades, data/trades].",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing dataset at --out.")
    ] = False,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Rewrite only the pair-days of the dataset at --out whose segments changed "
            "(nightly cron); same options as the dataset was built with.",
        ),
    ] = False,
    trades: Annotated[
        bool,
        typer.Option(
            "--trades",
            help="Write the recorded trades instead (--channels trade): one row per trade, "
            "each once; --every and --levels do not apply.",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option(metavar="N", help="Worker processes; 0 means every core.")
    ] = 0,
    engine: Annotated[
        str,
        typer.Option(
            metavar="ENGINE",
            help="Where the work runs: local (a process pool) or dask (a LocalCluster of "
            "--workers processes, or the cluster of --scheduler; pip install 'kbook[dask]').",
        ),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="With --engine dask: the scheduler to join, e.g. tcp://host:8786. "
            "[default: a LocalCluster]",
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help="Replay only segments of this Kraken API, v1 or v2 (a pair recorded with both "
            "is one timeline). [default: both]"
        ),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write what was replayed as Prometheus metrics to this file. [default: none]",
        ),
    ] = None,
    max_silence: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="A source's book is stale (rows invalid) once it has received nothing this long.",
        ),
    ] = "10s",
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="snapshots (rows on the --every grid), deltas (a row per level change, in "
            "the order applied), tardis (Tardis's incremental_book_L2 and book_snapshot_25 "
            "CSV) or hftbacktest (its event arrays, .npz); README, For backtests.",
        ),
    ] = "snapshots",
    exact_text: Annotated[
        bool,
        typer.Option(
            "--exact-text", help="With --format deltas: also the wire's price and size digits."
        ),
    ] = False,
) -> None:
    """Replay segments into Parquet book snapshots on a time grid (one row per pair and tick)."""
    from kbook.errors import UsageError
    from kbook.lines import native_core
    from kbook.storage import is_remote
    from replay.api import replay_to_dataset
    from replay.report import print_summary, progress_bar

    remote = any(is_remote(path) for path in [*(paths or []), out or ""])
    if output_format not in ("snapshots", "deltas", "tardis", "hftbacktest"):
        raise UsageError(
            f"--format must be snapshots, deltas, tardis or hftbacktest, got {output_format!r}"
        )
    if exact_text and output_format != "deltas":
        raise UsageError("--exact-text goes with --format deltas")
    if output_format != "snapshots":
        if trades or update or engine != "local":
            raise UsageError(
                f"--format {output_format} goes without --trades, --update and --engine dask"
            )
        out = out or f"data/{output_format}"
        sources = paths or [str(_default_raw())]
        _replay_deltas(
            sources, out, output_format, pair, start, end, force, api, max_silence, exact_text
        )
        return
    if trades:
        out = out or "data/trades"
        inputs: list[str | Path] = list(paths) if paths else [_default_raw()]
        _replay_trades(inputs, out, pair, start, end, force, api)
        return
    out = out or "data/snapshots"
    from replay.trades import replay_without_books

    note = None if remote else replay_without_books(paths or [_default_raw()], out, force)
    if note is not None:
        typer.echo(f"kbook replay: {note}", err=True)
        return

    if native_core() is None and os.environ.get("KBOOK_NATIVE", "1") != "0":
        typer.echo(
            "kbook: note: the native core was not built (no C compiler at install), so replay "
            "runs in pure Python, about 3.5x slower; see README, Performance",
            err=True,
        )
    try:
        with _stopped_by_signals(), progress_bar(enabled=sys.stderr.isatty()) as bar:
            summary = replay_to_dataset(
                paths or [_default_raw()],
                out,
                every=every,
                levels=levels,
                pairs=pair or None,
                start=start,
                end=end,
                force=force,
                workers=workers,
                progress=bar,
                api=api,
                max_silence=max_silence,
                update=update,
                engine=engine,
                scheduler=scheduler,
            )
    except _Interrupted as exc:
        _say_stopped(exc, out)
    print_summary(summary)
    if metrics_file is not None:
        from kbook import job_metrics

        job_metrics.write(metrics_file, job_metrics.replay_metrics(summary))
    for problem in summary.problems:
        typer.echo(f"kbook: warning: {problem}", err=True)
    if summary.result.malformed_frames:
        typer.echo(
            f"kbook: warning: {summary.result.malformed_frames} malformed frame(s) skipped "
            "(kbook verify lists where)",
            err=True,
        )


def _replay_deltas(
    paths: list[str],
    out: str,
    output_format: str,
    pair: list[str] | None,
    start: str | None,
    end: str | None,
    force: bool,
    api: str | None,
    max_silence: str,
    exact_text: bool,
) -> None:
    """``kbook replay --format deltas``: the delta dataset (``replay.deltas``), or the files
    of a backtester converted from it (``replay.backtest_formats``)."""
    from replay.backtest_formats import replay_to_backtest_files
    from replay.deltas import replay_deltas_to_dataset
    from replay.report import print_summary, progress_bar

    try:
        with _stopped_by_signals(), progress_bar(enabled=sys.stderr.isatty()) as bar:
            if output_format == "deltas":
                summary = replay_deltas_to_dataset(
                    paths, out, pair or None, start, end, force, api, max_silence, exact_text, bar
                )
            else:
                summary = replay_to_backtest_files(
                    paths,
                    out,
                    output_format,
                    pair or None,
                    start,
                    end,
                    force,
                    api,
                    max_silence,
                    bar,
                )
    except _Interrupted as exc:
        _say_stopped(exc, out)
    print_summary(summary)
    for problem in summary.problems:
        typer.echo(f"kbook: warning: {problem}", err=True)


def _say_stopped(exc: _Interrupted, out: str) -> NoReturn:
    """The one line of a replay stopped by a signal: what it left at ``out`` (a publish to
    object storage stopped past its commit point leaves it unfinished), then exit 128 + N."""
    from kbook.storage import left_as

    name = signal.Signals(exc.signum).name
    typer.echo(f"kbook: replay stopped by {name}: {left_as(exc, out)}", err=True)
    raise typer.Exit(128 + exc.signum) from None


def _replay_trades(
    paths: list[str | Path],
    out: str,
    pair: list[str] | None,
    start: str | None,
    end: str | None,
    force: bool,
    api: str | None,
) -> None:
    """``kbook replay --trades``: the trades dataset (``replay.trades``), a line per pair."""
    from replay.trades import replay_trades_to_dataset

    summary = replay_trades_to_dataset(paths, out, pair or None, start, end, force, api)
    for name, state in sorted(summary.ledger.pairs.items()):
        repeated = f", {state.repeated} repeated after reconnects dropped" if state.repeated else ""
        typer.echo(f"{name}: {state.kept} trades{repeated}", err=True)
    typer.echo(f"kbook replay: {summary.rows} trades into {out}", err=True)
    for problem in summary.problems:
        typer.echo(f"kbook: warning: {problem}", err=True)


@app.command(cls=_Command)
def simulate(
    port: Annotated[
        int, typer.Option(help="TCP port to listen on (127.0.0.1); 0 picks a free one.")
    ] = 8765,
    pairs: Annotated[
        str, typer.Option(help="Comma-separated pairs to serve, e.g. XBT/USD,ETH/USD.")
    ] = "XBT/USD,ETH/USD,XDG/USD,SOL/USD",
    rate: Annotated[
        float, typer.Option(help="Book updates per second per connection; 0: as fast as possible.")
    ] = 200.0,
    seed: Annotated[
        int, typer.Option(help="Random seed: the same seed sends the same frames.")
    ] = 7,
    duration: Annotated[
        str | None,
        typer.Option(
            metavar="TIME", help="Stop after this long (e.g. 30s, 2m). [default: until Ctrl+C]"
        ),
    ] = None,
    btc: Annotated[
        str,
        typer.Option(help="v1's answer to BTC/USD (and DOGE/...): echo-xbt, echo-btc or reject."),
    ] = "echo-xbt",
    api: Annotated[
        str | None,
        typer.Option(
            help="WebSocket API to speak, whatever the URL path: v2 (BTC/USD) or v1. The URL "
            "printed ends in /v2 for v2. [default: v2; with --from, v1]"
        ),
    ] = None,
    idle_timeout: Annotated[
        str,
        typer.Option(
            metavar="TIME", help="Close a connection the client said nothing on for this long."
        ),
    ] = "60s",
    heartbeat: Annotated[
        float, typer.Option(help="Seconds between heartbeats on a subscribed connection.")
    ] = 1.0,
    capture: Annotated[
        Path | None,
        typer.Option(
            "--from",
            metavar="FILE",
            help="Play back this kbook segment or capture file instead. "
            "[default: a seeded simulated market]",
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Playback speed factor for --from; 0: as fast as possible.")
    ] = 1.0,
    drop_after: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Cut TCP (no close frame) after N book frames. [default: never]",
        ),
    ] = None,
    stall_after: Annotated[
        int | None,
        typer.Option(
            min=0, metavar="N", help="Send nothing at all after N book frames. [default: never]"
        ),
    ] = None,
    stall_seconds: Annotated[
        float | None,
        typer.Option(min=0, metavar="SECONDS", help="How long a stall lasts. [default: forever]"),
    ] = None,
    bad_checksum_at: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="The N-th update carries a wrong checksum. [default: none]"
        ),
    ] = None,
    non_json_after: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Send a frame that is not JSON after N book frames. [default: never]",
        ),
    ] = None,
    maintenance_after: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Announce maintenance and close after N book frames. [default: never]",
        ),
    ] = None,
    rate_limit_subscribes: Annotated[
        int,
        typer.Option(
            min=0, metavar="N", help="Answer the first N subscribes with 'Exceeded msg rate'."
        ),
    ] = 0,
    refuse_connections: Annotated[
        int,
        typer.Option(
            min=0, metavar="N", help="Refuse the first N connection attempts with HTTP 503."
        ),
    ] = 0,
    repeat_faults: Annotated[
        bool, typer.Option(help="Apply the per-connection faults to every connection, not one.")
    ] = False,
) -> None:
    """Serve a simulated Kraken v2 (or --api v1) book feed on 127.0.0.1; prints its URL first."""
    from kbook.errors import UsageError
    from kbook.sim.config import SimulatorConfig
    from kbook.sim.faults import FaultPlan
    from kbook.sim.run import run
    from kbook.units import parse_duration

    duration_s = parse_duration(duration, "--duration") / 1e9 if duration is not None else None
    if duration_s is not None and duration_s <= 0:
        raise UsageError(f"--duration {duration} must be positive")
    idle_s = (
        float(idle_timeout)
        if _is_number(idle_timeout)
        else parse_duration(idle_timeout, "--idle-timeout") / 1e9
    )
    config = SimulatorConfig(
        pairs=tuple(p for p in pairs.split(",") if p.strip()),
        rate=rate,
        seed=seed,
        heartbeat_interval=heartbeat,
        idle_timeout=idle_s,
        btc=btc,
        api=api,
        capture=capture,
        speed=math.inf if speed == 0 else speed,
        port=port,
        record=False,
    )
    plan = FaultPlan(
        drop_after=drop_after,
        stall_after=stall_after,
        stall_seconds=stall_seconds,
        bad_checksum_at=bad_checksum_at,
        non_json_after=non_json_after,
        maintenance_after=maintenance_after,
        rate_limit_subscribes=rate_limit_subscribes,
        refuse_connections=refuse_connections,
        repeat=repeat_faults,
    )

    def announce(url: str) -> None:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()

    summary = run(config, plan, duration_s, announce)
    typer.echo(
        f"kbook simulate: stopped after {summary.seconds:.1f} s: {summary.connections} "
        f"connection(s), {summary.refused} refused, {summary.frames} frames sent",
        err=True,
    )


def _retention(keep_local: str | None, min_free: str | None, upload: str | None) -> Retention:
    """The retention options, checked: they only make sense with somewhere to upload to."""
    from kbook.errors import UsageError
    from kbook.units import parse_duration, parse_size
    from recorder.upload import Retention

    if upload is None and (keep_local is not None or min_free is not None):
        raise UsageError("--keep-local and --min-free delete uploaded segments: add --upload")
    keep_ns = parse_duration(keep_local) if keep_local is not None else None
    if keep_ns is not None and keep_ns < 0:
        raise UsageError(f"--keep-local {keep_local} must not be negative")
    return Retention(keep_ns, parse_size(min_free) if min_free is not None else None)


@app.command(cls=_Command)
def upload(
    raw: Annotated[
        Path, typer.Argument(metavar="RAW", help="The folder of segments, e.g. data/raw.")
    ],
    destination: Annotated[
        str,
        typer.Argument(
            metavar="DESTINATION", help="s3://bucket/prefix (AWS variables) or a local folder."
        ),
    ],
    keep_local: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Delete local segments closed longer ago than this, once uploaded. "
            "[default: kept forever]",
        ),
    ] = None,
    min_free: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="Below this free space delete the oldest uploaded segments first. "
            "[default: no limit]",
        ),
    ] = None,
) -> None:
    """Upload closed segments not yet uploaded, verify each by reading it back; idempotent."""
    from recorder.upload import upload_folder

    summary = upload_folder(raw, destination, _retention(keep_local, min_free, destination))
    typer.echo(
        f"kbook upload: {summary.uploaded} uploaded, {summary.already} already there, "
        f"{len(summary.failed)} failed, {summary.deleted} local copies deleted",
        err=True,
    )
    for failure in summary.failed:
        typer.echo(f"kbook: warning: {failure}", err=True)
    if summary.failed:
        raise KbookError(f"{len(summary.failed)} segment(s) could not be uploaded; run it again")


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwind (``finally`` blocks remove unfinished output), then exit
    with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Stopped:
    signal: int | None = None


@contextmanager
def _stopped_by_signals() -> Iterator[_Stopped]:
    """Turn SIGTERM into what Ctrl+C does, and stop replay's worker processes at once on either.

    Without it SIGTERM ends the process on the spot and the hidden folder of an unfinished
    dataset stays behind; and a pool waits for its running tasks before it unwinds."""
    stopped = _Stopped()

    def stop(signum: int, _frame: object) -> None:
        if stopped.signal is None:
            stopped.signal = signum
            for child in multiprocessing.active_children():
                child.terminate()
            raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _snapshot_pairs(snapshots: str) -> list[str]:
    """The pairs (``BTC-USD``) of a snapshot dataset, local or on object storage."""
    from kbook.storage import is_remote, open_location
    from replay.api import require_kind, snapshot_keys
    from replay.parquet import require_snapshots

    require_kind(snapshots, "snapshots")  # deltas, Tardis or hftbacktest files: say so
    if is_remote(snapshots):
        keys = snapshot_keys(open_location(snapshots, "SNAPSHOTS"))
        names = {key.split("/", 1)[0] for key in keys}
    else:
        require_snapshots(Path(snapshots))
        names = {p.name for p in Path(snapshots).glob("pair=*")}
    return sorted(name.removeprefix("pair=") for name in names)


def _default_raw() -> Path:
    """``data/raw``, the recorder's default output, when it exists; else a one-line hint."""
    from kbook.errors import UsageError

    raw = Path("data/raw")
    if not raw.is_dir():
        raise UsageError(
            "no segments given and ./data/raw does not exist: pass segment files or folders "
            "(kbook replay PATH...), or record some first (kbook record PAIR)"
        )
    return raw


def _is_number(text: str) -> bool:
    """True for a bare number of seconds such as ``60`` or ``0.5``."""
    try:
        float(text)
    except ValueError:
        return False
    return True


@app.command(cls=_Command)
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the demo's segments, snapshots and picture.")
    ] = Path("data/demo"),
    seconds: Annotated[float, typer.Option(help="How long to record.")] = 15.0,
) -> None:
    """Simulate Kraken on loopback, record ~15 s, verify, replay to Parquet, plot: no internet."""
    import pyarrow as pa
    from rich.console import Console
    from rich.table import Table

    from kbook.demo import run_demo
    from kbook.units import utc_text
    from replay import read_snapshots

    console = Console(soft_wrap=True)
    result = run_demo(out, seconds=seconds, say=console.print)
    columns = ["ts", "valid", "bid_px_0", "bid_sz_0", "ask_px_0", "ask_sz_0"]
    table = read_snapshots(result.snapshots, pair="BTC/USD", columns=columns).slice(0, 5)
    shown = Table(title="the first BTC/USD snapshot rows (10 levels per side in the files)")
    for column in columns:
        shown.add_column(column, justify="right")
    # Timestamps as integers: pyarrow turns ns timestamps into datetimes only with pandas around.
    times = table.column("ts").cast(pa.int64()).to_pylist()
    values = {c: table.column(c).to_pylist() for c in columns[1:]}
    for i, ns in enumerate(times):
        shown.add_row(
            utc_text(ns, 0)[11:19],  # HH:MM:SS
            str(values["valid"][i]),
            *(f"{values[c][i]:.5f}" if values[c][i] is not None else "-" for c in columns[2:]),
        )
    console.print(shown)
    console.print("Load them in Python:")
    console.print(
        f'    import pyarrow.parquet as pq; table = pq.read_table("{result.snapshots}")',
        highlight=False,
    )
    console.print(
        f'    import pandas as pd; df = pd.read_parquet("{result.snapshots}")   # with pandas',
        highlight=False,
    )
    console.print(
        f"Next: kbook verify {result.raw}   |   kbook replay {result.raw} --every 100ms "
        f"--out {out / 'snapshots-100ms'}",
        highlight=False,
    )


@app.command(cls=_Command)
def plot(
    snapshots: Annotated[
        str,
        typer.Argument(
            metavar="SNAPSHOTS", help="A dataset written by kbook replay (s3://bucket/prefix too)."
        ),
    ],
    pair: Annotated[
        str | None, typer.Option(help="Pair to draw, e.g. BTC/USD [default: the only one].")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            metavar="TIME", help="From this time, ISO 8601 (naive = UTC). [default: the first row]"
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="Until this time (exclusive). [default: the last row]"),
    ] = None,
    out: Annotated[Path, typer.Option(metavar="PNG", help="PNG file to write.")] = Path("book.png"),
) -> None:
    """Draw mid, spread and a depth heatmap of a replayed period, invalid spans shaded."""
    from kbook.errors import InputError, UsageError
    from kbook.pairs import common_name, parse_pair
    from kbook.plot import plot_book, require_matplotlib
    from replay import read_snapshots

    require_matplotlib()
    found = _snapshot_pairs(snapshots)  # and a one-line error for what is not a dataset
    if pair is None:
        if len(found) != 1:
            choices = ", ".join(name.replace("-", "/") for name in found) or "none"
            raise UsageError(f"name the pair to draw with --pair (found: {choices})")
        pair = found[0]
    name = common_name(parse_pair(pair))
    table = read_snapshots(snapshots, pair=name, start=start, end=end)
    if table.num_rows == 0:
        raise InputError(f"{snapshots}: no rows for {name} in that time range")
    written = plot_book(table, name, out)
    typer.echo(f"kbook plot: {table.num_rows} rows of {name} drawn to {written}")


@app.command(cls=_Command)
def watch(
    pair: Annotated[
        str, typer.Argument(metavar="PAIR", help="Pair to watch, e.g. BTC/USD or XBT/USD.")
    ],
    depth: Annotated[
        int | None,
        typer.Option(
            help="Book depth to subscribe: 10, 25, 100, 500 or 1000 [default: 10]; "
            "with --from, the recorded depth to show [default: the one recorded]."
        ),
    ] = None,
    levels: Annotated[
        int | None, typer.Option(help="Levels per side to show [default: the depth, at most 10].")
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help="Kraken WebSocket API: v2 or v1. [default: the one --url says (a path ending in "
            "/v2 is v2, else v1), else v2; with --from, the API of the first recorded book of PAIR]"
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Kraken WebSocket address [default: wss://ws.kraken.com/v2, or "
            "wss://ws.kraken.com with --api v1]."
        ),
    ] = None,
    sources: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            metavar="PATH",
            help="Replay these segments or folders instead of connecting (repeat the option). "
            "[default: connect to Kraken]",
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Replay pace: 1 as recorded, 10 ten times faster, 0 at once.")
    ] = 1.0,
) -> None:
    """Show the live book of PAIR: best bids and asks side by side, checksum status, rates.

    Redrawn in place on a terminal; one plain text block per second when stdout is a pipe or a
    file. Nothing is written to disk. Ctrl+C stops it (exit 0); with --from it ends after the last
    frame of the recording, leaving the last view and a summary line.
    """
    from kbook.watch import WatchOptions, run_watch

    options = WatchOptions(
        pair=pair,
        depth=depth,
        levels=levels,
        url=url,
        api=api,
        paths=tuple(sources or ()),
        speed=speed,
    )
    try:
        summary = run_watch(options, sys.stdout)
    except KeyboardInterrupt:  # a second Ctrl+C during the final redraw
        raise typer.Exit(0) from None
    for problem in summary.problems:
        typer.echo(f"kbook: warning: {problem}", err=True)
    typer.echo(summary.line(), err=True)


BLAS_THREADS = "OPENBLAS_NUM_THREADS"
"""numpy's OpenBLAS starts a thread per core when numpy loads (pyarrow loads numpy), and each
spins for a while waiting for work kbook never gives it: some 0.2 CPU s per process for
nothing, in every worker too. kbook does no linear algebra."""


def single_threaded_blas() -> None:
    """Keep OpenBLAS to the calling thread in this process and the ones it starts (replay's
    workers, Dask's), unless the user chose otherwise; before numpy loads, or it has no effect."""
    os.environ.setdefault(BLAS_THREADS, "1")


def main() -> None:
    """Console entry point: run the app, mapping kbook's errors to one-line messages."""
    single_threaded_blas()
    try:
        # Outside standalone mode click returns the code of a ``typer.Exit`` instead of exiting.
        result = app(standalone_mode=False)
    except KbookError as exc:
        if os.environ.get("KBOOK_DEBUG"):
            raise
        typer.echo(f"kbook: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("kbook: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("kbook: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click's usage errors (typer >= 0.29 vendors click: no `click`)
        message, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if not callable(message) or not isinstance(code, int):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain ``kbook``: the help is the message
            typer.echo(message(), err=True)
            sys.exit(code)
        context = getattr(exc, "ctx", None)
        where = f" (see {context.command_path} --help)" if context is not None else ""
        typer.echo(f"kbook: error: {message().rstrip('.')}{where}", err=True)
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else 0)
