"""What ``kbook watch`` shows: one book and its status, as a rich renderable or as plain text.

Both views are pure functions of ``(book, status, levels)``: no clock, no terminal, no I/O, so they
are tested directly and the loop in ``kbook.watch`` only decides *when* to draw. The book's strings
are shown as received (the exact decimals Kraken sent); the derived numbers (cumulative volume,
spread, mid) are computed with ``Decimal`` so they never show float noise such as
``0.30000000000000004``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kbook.book import Book
from kbook.dialect import Trade
from kbook.units import SECOND

CHECKSUM_STATES = ("ok", "failed", "resyncing", "waiting")
"""``ok``: the book passed its last check; ``failed``: a checksum did not match and no resync has
started yet; ``resyncing``: waiting for the new snapshot after a failure or a reconnect;
``waiting``: no snapshot yet."""
BAR_WIDTH = 16
"""Cells of the cumulative-depth bar on each side of the rich view."""
_STATE_STYLE = {"ok": "bold green", "failed": "bold red", "resyncing": "bold yellow"}


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """Everything around the book that the view shows; times are integer ns since the epoch."""

    pair: str
    """The pair by its common name (``BTC/USD`` for ``XBT/USD``), as every command names it."""
    channel: str | None
    """``book-N`` once known."""
    source: str
    """Where frames come from: a ``ws://`` address or ``replay``."""
    connection: str
    """``connected``, ``reconnecting: <reason>``, ``replay 1/2 files at 1x``, ..."""
    checksum: str
    """One of ``CHECKSUM_STATES``."""
    now_ns: int
    """The view's clock: wall time live, recorded time in a replay."""
    frames: int = 0
    """Book frames (snapshots and updates) of the pair so far."""
    frames_per_s: float = 0.0
    checksums_ok: int = 0
    checksums_failed: int = 0
    reconnects: int = 0
    last_update_ns: int | None = None
    last_failed_ns: int | None = None
    note: str | None = None
    """The latest thing worth knowing (a reconnect reason, a refused alias), or None."""
    note_ns: int | None = None
    trades: tuple[Trade, ...] = ()
    """The pair's last trades, newest first (shown under the book when there are any)."""


@dataclass(frozen=True, slots=True)
class Rung:
    """One row of the ladder: the n-th best bid and the n-th best ask (either may be missing)."""

    bid_price: str = ""
    bid_volume: str = ""
    bid_total: Decimal | None = None
    ask_price: str = ""
    ask_volume: str = ""
    ask_total: Decimal | None = None


# -- derived numbers ------------------------------------------------------------------------------


def ladder(book: Book | None, levels: int) -> list[Rung]:
    """The best ``levels`` bids and asks side by side, with cumulative volume from the top."""
    if book is None or levels < 1:
        return []
    bids, asks = book.top_bids(levels), book.top_asks(levels)
    bid_totals, ask_totals = _running_totals(bids), _running_totals(asks)
    rungs = []
    for index in range(max(len(bids), len(asks))):
        bid = bids[index] if index < len(bids) else ("", "")
        ask = asks[index] if index < len(asks) else ("", "")
        rungs.append(
            Rung(
                bid_price=bid[0],
                bid_volume=bid[1],
                bid_total=bid_totals[index] if index < len(bids) else None,
                ask_price=ask[0],
                ask_volume=ask[1],
                ask_total=ask_totals[index] if index < len(asks) else None,
            )
        )
    return rungs


def _running_totals(side: list[tuple[str, str]]) -> list[Decimal]:
    totals, total = [], Decimal(0)
    for _price, volume in side:
        total += Decimal(volume)
        totals.append(total)
    return totals


def spread_and_mid(book: Book | None) -> tuple[str, str, str] | None:
    """``(spread, mid, spread in basis points)`` as text, or None when a side is empty.

    A crossed book (possible after a missed update: only the top 10 are hashed) shows a negative
    spread rather than hiding it.
    """
    if book is None:
        return None
    bids, asks = book.top_bids(1), book.top_asks(1)
    if not bids or not asks:
        return None
    bid, ask = Decimal(bids[0][0]), Decimal(asks[0][0])
    spread, mid = ask - bid, (ask + bid) / 2
    bps = f"{spread / mid * 10_000:.2f}" if mid else "-"
    return format(spread, "f"), format(mid, "f"), bps


def _total(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")


def utc_text(ns: int) -> str:
    """``2023-08-30T17:08:47.935Z``: integer ns since the epoch, UTC, milliseconds."""
    moment = datetime.fromtimestamp(ns / SECOND, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age(now_ns: int, then_ns: int | None) -> str:
    if then_ns is None:
        return "never"
    return f"{max(now_ns - then_ns, 0) / SECOND:.1f} s ago"


# -- the lines both views share -------------------------------------------------------------------


def title_line(status: WatchStatus) -> str:
    """``<time>  XBT/USD  book-10  ws://...  connected``."""
    parts = [utc_text(status.now_ns), status.pair, status.channel or "book-?"]
    return "  ".join([*parts, status.source, status.connection])


def status_line(status: WatchStatus) -> str:
    """Checksum state, rate, counts and freshness, in one line."""
    failed = f"failed {status.checksums_failed}"
    if status.last_failed_ns is not None:
        failed += f" (last {_age(status.now_ns, status.last_failed_ns)})"
    return " | ".join(
        [
            f"checksum {status.checksum}",
            f"{status.frames_per_s:.1f} frames/s",
            f"checksums ok {status.checksums_ok} {failed}",
            f"reconnects {status.reconnects}",
            f"last update {_age(status.now_ns, status.last_update_ns)}",
        ]
    )


def market_line(book: Book | None) -> str:
    """``spread 0.10000 (0.02 bps) | mid 58724.85000``, or why there is none."""
    numbers = spread_and_mid(book)
    if numbers is None:
        return "spread - | mid -"
    spread, mid, bps = numbers
    return f"spread {spread} ({bps} bps) | mid {mid}"


def trade_lines(status: WatchStatus) -> list[str]:
    """``last trades`` and one line per trade: ``10:00:00.123  buy  0.10000000 @ 27120.5  market``."""
    if not status.trades:
        return []
    lines = ["last trades"]
    for trade in status.trades:
        when = utc_text(trade.exch_ns)[11:23]
        lines.append(f"{when}  {trade.side:<4}  {trade.qty} @ {trade.price}  {trade.order_type}")
    return lines


def note_line(status: WatchStatus) -> str:
    """``note: disconnected: stalled (12.0 s ago)``."""
    age = f" ({_age(status.now_ns, status.note_ns)})" if status.note_ns is not None else ""
    return f"note: {status.note}{age}"


# -- plain text -----------------------------------------------------------------------------------

_PLAIN_HEADERS = ("bid total", "bid volume", "bid price", "ask price", "ask volume", "ask total")


def render_text(book: Book | None, status: WatchStatus, levels: int) -> str:
    """The view as plain aligned text for pipes and logs: no colours, no escape codes.

    A block is the title line, the status line, the market line, then one line per level with the
    bids on the left (best first, prices right-aligned) and the asks on the right, ending with an
    empty line so that blocks stand apart in a log.
    """
    lines = [title_line(status), status_line(status), market_line(book)]
    if status.note:
        lines.append(note_line(status))
    rows = [
        (
            _total(r.bid_total),
            r.bid_volume,
            r.bid_price,
            r.ask_price,
            r.ask_volume,
            _total(r.ask_total),
        )
        for r in ladder(book, levels)
    ]
    if rows:
        widths = [
            max(len(cell) for cell in column) for column in zip(_PLAIN_HEADERS, *rows, strict=True)
        ]
        for row in [_PLAIN_HEADERS, *rows]:
            cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
            lines.append((" ".join(cells[:3]) + " | " + " ".join(cells[3:])).rstrip())
    else:
        lines.append("(no levels yet)")
    lines += trade_lines(status)
    return "\n".join(lines) + "\n\n"


# -- rich -----------------------------------------------------------------------------------------


def render_rich(book: Book | None, status: WatchStatus, levels: int) -> RenderableType:
    """The view for a terminal: header lines, then the ladder with cumulative-depth bars.

    Levels of a book that is not valid (after a failure or a drop, before the new snapshot) are
    dimmed: they are the last known state, not the market.
    """
    header = Text(title_line(status), style="bold")
    state = Text("checksum ")
    state.append(status.checksum, style=_STATE_STYLE.get(status.checksum, "dim"))
    state.append(status_line(status).removeprefix(f"checksum {status.checksum}"))
    parts: list[RenderableType] = [header, state, Text(market_line(book))]
    if status.note:
        parts.append(Text(note_line(status), style="yellow"))
    parts.append(_ladder_table(book, levels))
    for number, line in enumerate(trade_lines(status)):
        style = "bold" if number == 0 else ("green" if " buy " in line else "red")
        parts.append(Text(line, style=style))
    return Group(*parts)


def _ladder_table(book: Book | None, levels: int) -> Table:
    rungs = ladder(book, levels)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    dim = book is not None and not book.valid
    table.add_column("", justify="right", style="dim" if dim else "green", min_width=BAR_WIDTH)
    for name, style in (("bid total", ""), ("bid volume", ""), ("bid", "green"), ("ask", "red")):
        table.add_column(name, justify="right", style="dim" if dim else style, no_wrap=True)
    for name in ("ask volume", "ask total"):
        table.add_column(name, justify="right", style="dim" if dim else "", no_wrap=True)
    table.add_column("", justify="left", style="dim" if dim else "red", min_width=BAR_WIDTH)
    totals = [t for r in rungs for t in (r.bid_total, r.ask_total) if t is not None]
    biggest = max(totals, default=Decimal(0))
    for r in rungs:
        table.add_row(
            _bar(r.bid_total, biggest),
            _total(r.bid_total),
            r.bid_volume,
            r.bid_price,
            r.ask_price,
            r.ask_volume,
            _total(r.ask_total),
            _bar(r.ask_total, biggest),
        )
    if not rungs:
        table.add_row("", "", "", "waiting", "for the", "snapshot", "", "")
    return table


def _bar(total: Decimal | None, biggest: Decimal) -> str:
    """A bar of whole cells proportional to ``total`` (at least one cell when non-zero)."""
    if total is None or biggest <= 0 or total <= 0:
        return ""
    return "█" * max(1, round(BAR_WIDTH * total / biggest))
