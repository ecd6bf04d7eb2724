"""``kbook plot``: one picture of a replayed period, from a snapshot table.

Three panels sharing the time axis: best bid/ask and mid, the spread in basis points, and a depth
heatmap of every recorded level (bids green, asks red, colour = resting size on a log scale, with
a colour bar per side). Spans where the book was invalid are shaded grey in every panel, so a hole
is never mistaken for a quiet market. matplotlib is an optional extra (``pip install 'kbook[plot]'``).

A row at grid time ``t`` shows the book from ``t`` until the next grid time, so prices are drawn
as steps, a heatmap cell covers exactly the rows it sums, cells never straddle a change of
validity (the first valid cell after a gap starts where the grey span ends), and the price axis
covers every level drawn: nothing is clipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from kbook.errors import InputError, UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_TIME_BINS = 1200
"""At most this many heatmap columns: more rows are averaged, a run of rows per column."""
PRICE_BINS = 240


def require_matplotlib() -> None:
    """Raise a one-line ``UsageError`` when the plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "kbook plot needs matplotlib: pip install 'kbook[plot]' (or pip install matplotlib)"
        ) from exc


def level_count(table: pa.Table) -> int:
    """How many levels a snapshot table holds (``bid_px_0`` .. ``bid_px_{n-1}``)."""
    n = 0
    while f"bid_px_{n}" in table.column_names:
        n += 1
    return n


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype("float64")


def row_ends(t_ns: np.ndarray) -> np.ndarray:
    """When each row's book stops being shown: the next row's time; for the last row, one grid
    interval later (the smallest step between rows)."""
    steps = np.diff(t_ns)
    every = int(steps[steps > 0].min()) if (steps > 0).any() else 1
    return np.append(t_ns[1:], t_ns[-1] + every)


def invalid_spans(t_ns: np.ndarray, valid: np.ndarray) -> list[tuple[int, int]]:
    """Runs of invalid rows as ``(start, end)`` ns: from the first invalid row's time to the end
    of the last one (``row_ends``)."""
    ends = row_ends(t_ns)
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for i, ok in enumerate(valid):
        if not ok and start is None:
            start = int(t_ns[i])
        if not ok and (i + 1 == len(valid) or valid[i + 1]):
            assert start is not None
            spans.append((start, int(ends[i])))
            start = None
    return spans


def column_starts(valid: np.ndarray, width: int) -> np.ndarray:
    """First row of each heatmap column: every ``width`` rows, and at every change of validity,
    so that no column mixes valid and invalid rows."""
    n = len(valid)
    changes = np.flatnonzero(valid[1:] != valid[:-1]) + 1
    return np.unique(np.concatenate([np.arange(0, n, width), changes]))


def price_edges(table: pa.Table, levels: int) -> np.ndarray:
    """``PRICE_BINS`` equal bins from the lowest bid to the highest ask at any level."""
    lows = [_column(table, f"bid_px_{i}") for i in range(levels)]
    highs = [_column(table, f"ask_px_{i}") for i in range(levels)]
    low, high = np.nanmin(np.concatenate(lows)), np.nanmax(np.concatenate(highs))
    if not low < high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, PRICE_BINS + 1)


def depth_grid(
    table: pa.Table, side: str, levels: int, starts: np.ndarray, edges_p: np.ndarray
) -> np.ndarray:
    """Mean resting size per (price bin, column) over every level of one side: the sum over the
    levels in the price bin, averaged over the column's valid rows (NaN: nothing there)."""
    n = table.num_rows
    column_of_row = np.searchsorted(starts, np.arange(n), side="right") - 1
    valid = table.column("valid").to_numpy(zero_copy_only=False).astype(bool)
    rows = np.bincount(column_of_row[valid], minlength=len(starts)).astype("float64")
    grid = np.zeros((len(edges_p) - 1, len(starts)))
    for i in range(levels):
        px = _column(table, f"{side}_px_{i}")
        sz = _column(table, f"{side}_sz_{i}")
        ok = np.isfinite(px) & np.isfinite(sz) & (sz > 0)
        p_bin = np.clip(np.searchsorted(edges_p, px[ok], side="right") - 1, 0, len(edges_p) - 2)
        np.add.at(grid, (p_bin, column_of_row[ok]), sz[ok])
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = grid / rows
    grid[grid <= 0] = np.nan
    return grid


def _steps(t_end: np.datetime64, times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """A row's value holds until the next row: points for ``drawstyle="steps-post"`` that also
    hold the last value to the end of the last row."""
    return np.append(times, t_end), np.append(values, values[-1])


def draw_book(table: pa.Table, pair: str) -> Figure:
    """The figure of ``table`` (one pair's snapshot rows, time-ordered)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if table.num_rows < 2:
        raise InputError(f"{pair}: fewer than two snapshot rows to plot; replay a longer period")
    levels = level_count(table)
    if levels == 0:
        raise InputError("the snapshot table has no bid_px_0 column; is it kbook replay output?")
    t_ns = table.column("ts").cast(pa.int64()).to_numpy()
    times = t_ns.astype("datetime64[ns]")
    ends = row_ends(t_ns)
    t_end = np.datetime64(int(ends[-1]), "ns")
    valid = table.column("valid").to_numpy(zero_copy_only=False).astype(bool)
    bid, ask = _column(table, "bid_px_0"), _column(table, "ask_px_0")
    mid = (bid + ask) / 2
    spread_bps = (ask - bid) / mid * 1e4

    fig, axes = plt.subplots(
        3, 1, figsize=(12, 9), sharex=True, height_ratios=[2, 1, 3], layout="constrained"
    )
    ax_px, ax_spread, ax_depth = axes
    for values, colour, width, label in (
        (ask, "#c0392b", 0.8, "best ask"),
        (bid, "#1e8449", 0.8, "best bid"),
        (mid, "#2c3e50", 1.0, "mid"),
    ):
        ax_px.plot(
            *_steps(t_end, times, values),
            color=colour,
            lw=width,
            label=label,
            drawstyle="steps-post",
        )
    ax_px.set_ylabel("price")
    ax_px.legend(loc="upper left", fontsize=8, ncols=3)
    ax_spread.plot(
        *_steps(t_end, times, spread_bps), color="#8e44ad", lw=0.8, drawstyle="steps-post"
    )
    ax_spread.set_ylabel("spread (bps)")

    width = -(-table.num_rows // MAX_TIME_BINS)
    starts = column_starts(valid, width)
    edges_t = np.append(t_ns[starts], ends[-1]).astype("datetime64[ns]")
    edges_p = price_edges(table, levels)
    for side, cmap in (("bid", "Greens"), ("ask", "Reds")):
        grid = depth_grid(table, side, levels, starts, edges_p)
        if not np.isfinite(grid).any():
            continue
        mesh = ax_depth.pcolormesh(
            edges_t,
            edges_p,
            np.ma.masked_invalid(grid),
            cmap=cmap,
            norm=LogNorm(vmin=np.nanmin(grid), vmax=np.nanmax(grid)),
            shading="flat",
        )
        # Beside every panel, so that the three share their width as they share the time axis.
        fig.colorbar(mesh, ax=axes, shrink=0.45, anchor=(0.0, 0.0), pad=0.01, label=f"{side} size")
    ax_depth.plot(*_steps(t_end, times, mid), color="#2c3e50", lw=0.6, drawstyle="steps-post")
    ax_depth.set_ylim(edges_p[0], edges_p[-1])
    ax_depth.set_ylabel(f"price (every one of {levels} levels)")
    ax_depth.set_xlabel("time (UTC)")
    ax_depth.set_xlim(times[0], t_end)

    spans = invalid_spans(t_ns, valid)
    for ax in (ax_px, ax_spread, ax_depth):
        for start, end in spans:
            ax.axvspan(
                np.datetime64(start, "ns"),
                np.datetime64(end, "ns"),
                color="#7f8c8d",
                alpha=0.3,
                lw=0,
            )
    invalid_share = 1 - valid.mean()
    title = f"{pair}: {times[0].astype('datetime64[s]')} to {times[-1].astype('datetime64[s]')} UTC"
    title += f", {len(times)} rows"
    title += f", invalid {invalid_share:.1%} (grey)" if spans else ", no invalid spans"
    fig.suptitle(title)
    return fig


def plot_book(table: pa.Table, pair: str, out: Path) -> Path:
    """Draw ``table`` (one pair's snapshot rows, time-ordered) into the PNG ``out``."""
    fig = draw_book(table, pair)
    import matplotlib.pyplot as plt  # after draw_book chose the Agg backend

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
