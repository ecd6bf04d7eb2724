"""``kbook watch``'s view as pure functions of (book, status): plain text and the rich renderable."""

from __future__ import annotations

import io
from dataclasses import replace
from decimal import Decimal

import pytest
from rich.console import Console

from kbook.book import Book
from kbook.watch.view import (
    CHECKSUM_STATES,
    WatchStatus,
    ladder,
    render_rich,
    render_text,
    spread_and_mid,
)

T0 = 1_693_415_327_935_000_000  # 2023-08-30T17:08:47.935Z
ASKS = [["27120.10000", "0.50000000", "1"], ["27120.50000", "1.25000000", "1"]]
BIDS = [
    ["27120.00000", "4.28732553", "1"],
    ["27119.90000", "0.00000050", "1"],
    ["27118.00000", "2.00000000", "1"],
]


def book(asks: list[list[str]] = ASKS, bids: list[list[str]] = BIDS) -> Book:
    result = Book(10)
    result.apply_snapshot(asks, bids)
    return result


def status(**changes: object) -> WatchStatus:
    base = WatchStatus(
        pair="XBT/USD",
        channel="book-10",
        source="ws://127.0.0.1:1",
        connection="connected",
        checksum="ok",
        now_ns=T0 + 2_500_000_000,
        frames=1234,
        frames_per_s=201.0,
        checksums_ok=1233,
        checksums_failed=0,
        reconnects=1,
        last_update_ns=T0 + 2_400_000_000,
    )
    return replace(base, **changes)


def test_plain_block_is_exact_aligned_text() -> None:
    assert render_text(book(), status(), 10) == (
        "2023-08-30T17:08:50.435Z  XBT/USD  book-10  ws://127.0.0.1:1  connected\n"
        "checksum ok | 201.0 frames/s | checksums ok 1233 failed 0 | reconnects 1"
        " | last update 0.1 s ago\n"
        "spread 0.10000 (0.04 bps) | mid 27120.05000\n"
        " bid total bid volume   bid price |   ask price ask volume  ask total\n"
        "4.28732553 4.28732553 27120.00000 | 27120.10000 0.50000000 0.50000000\n"
        "4.28732603 0.00000050 27119.90000 | 27120.50000 1.25000000 1.75000000\n"
        "6.28732603 2.00000000 27118.00000 |\n"
        "\n"
    )


def test_levels_limits_the_rows_and_totals_are_exact_decimals() -> None:
    rungs = ladder(book(), 2)
    assert [(r.bid_price, r.ask_price) for r in rungs] == [
        ("27120.00000", "27120.10000"),
        ("27119.90000", "27120.50000"),
    ]
    # 4.28732553 + 0.00000050 with no float noise and no exponent (str(Decimal) would say 5.0E-7).
    assert rungs[1].bid_total == Decimal("4.28732603")
    assert "E-" not in render_text(book(), status(), 2)


@pytest.mark.parametrize("state", CHECKSUM_STATES)
def test_every_checksum_state_is_shown_in_both_views(state: str) -> None:
    shown = status(checksum=state, checksums_failed=2, last_failed_ns=T0)
    assert f"checksum {state} |" in render_text(book(), shown, 10)
    assert f"checksum {state} |" in rich_text(book(), shown)
    assert "failed 2 (last 2.5 s ago)" in render_text(book(), shown, 10)


def test_rich_view_shows_the_ladder_with_depth_bars() -> None:
    screen = rich_text(book(), status(note="disconnected: stalled"))
    assert "XBT/USD  book-10" in screen
    assert "spread 0.10000 (0.04 bps) | mid 27120.05000" in screen
    assert "note: disconnected: stalled" in screen
    row = next(line for line in screen.splitlines() if "27120.00000" in line)
    assert row.index("4.28732553") < row.index("27120.00000") < row.index("27120.10000")
    assert "█" in row
    # The biggest cumulative volume gets the full bar.
    last_bid = next(line for line in screen.splitlines() if "27118.00000" in line)
    assert "█" * 16 in last_bid


def test_empty_and_one_sided_books_have_no_spread() -> None:
    assert spread_and_mid(None) is None
    assert spread_and_mid(book(asks=[])) is None
    empty = render_text(None, status(checksum="waiting", last_update_ns=None), 10)
    assert "(no levels yet)" in empty
    assert "last update never" in empty
    assert "waiting" in rich_text(None, status(checksum="waiting"))


def test_crossed_book_shows_a_negative_spread() -> None:
    crossed = book(asks=[["27119.00000", "1.00000000"]], bids=[["27120.00000", "1.00000000"]])
    assert spread_and_mid(crossed) == ("-1.00000", "27119.50000", "-0.37")


def test_plain_text_has_no_escape_codes() -> None:
    text = render_text(book(), status(checksum="failed", note="x"), 10)
    assert "\x1b" not in text


def rich_text(shown_book: Book | None, shown: WatchStatus) -> str:
    """The rich view as a 140-column terminal would show it, without styles."""
    console = Console(width=140, record=True, file=io.StringIO(), color_system=None)
    console.print(render_rich(shown_book, shown, 10))
    return console.export_text()


def test_a_note_says_how_old_it_is() -> None:
    shown = status(note="disconnected: stalled", note_ns=T0)
    assert "note: disconnected: stalled (2.5 s ago)\n" in render_text(book(), shown, 10)
    assert "note: disconnected: stalled (2.5 s ago)" in rich_text(book(), shown)
