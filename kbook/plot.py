"""``kbook plot``: one picture of a replayed period, from a snapshot table.

Three panels sharing the time axis: best bid/ask and mid, the spread in basis points, and a depth
heatmap of every recorded level (bids green, asks red, colour = resting size on a log scale).
Spans where the book was invalid are shaded grey in every panel, so a hole is never mistaken for
a quiet market. matplotlib is an optional extra (``pip install 'kbook[plot]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from kbook.errors import InputError, UsageError

MAX_TIME_BINS = 1200
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


def _invalid_spans(
    times: np.ndarray, valid: np.ndarray
) -> list[tuple[np.datetime64, np.datetime64]]:
    """Runs of invalid rows as (start, end) times; each run extends to the next row's time."""
    spans = []
    start = None
    for i, ok in enumerate(valid):
        if not ok and start is None:
            start = times[i]
        elif ok and start is not None:
            spans.append((start, times[i]))
            start = None
    if start is not None:
        spans.append((start, times[-1]))
    return spans


def _depth_grid(
    table: pa.Table, side: str, levels: int, edges_t: np.ndarray, edges_p: np.ndarray
) -> np.ndarray:
    """Total size per (price bin, time bin) over every level of one side."""
    t_ns = table.column("ts").cast(pa.int64()).to_numpy()
    t_bin = np.clip(np.searchsorted(edges_t, t_ns, side="right") - 1, 0, len(edges_t) - 2)
    grid = np.zeros((len(edges_p) - 1, len(edges_t) - 1))
    for i in range(levels):
        px = _column(table, f"{side}_px_{i}")
        sz = _column(table, f"{side}_sz_{i}")
        ok = np.isfinite(px) & np.isfinite(sz) & (px >= edges_p[0]) & (px <= edges_p[-1])
        p_bin = np.clip(np.searchsorted(edges_p, px[ok], side="right") - 1, 0, len(edges_p) - 2)
        np.add.at(grid, (p_bin, t_bin[ok]), sz[ok])
    return grid


def plot_book(table: pa.Table, pair: str, out: Path) -> Path:
    """Draw ``table`` (one pair's snapshot rows, time-ordered) into the PNG ``out``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if table.num_rows < 2:
        raise InputError(f"{pair}: fewer than two snapshot rows to plot; replay a longer period")
    levels = level_count(table)
    if levels == 0:
        raise InputError("the snapshot table has no bid_px_0 column; is it kbook replay output?")
    times = table.column("ts").to_numpy().astype("datetime64[ns]")
    valid = table.column("valid").to_numpy(zero_copy_only=False).astype(bool)
    bid, ask = _column(table, "bid_px_0"), _column(table, "ask_px_0")
    mid = (bid + ask) / 2
    spread_bps = (ask - bid) / mid * 1e4

    t_ns = times.astype("int64")
    edges_t = np.linspace(t_ns[0], t_ns[-1] + 1, min(MAX_TIME_BINS, len(t_ns)) + 1)
    deep_bid = _column(table, f"bid_px_{levels - 1}")
    deep_ask = _column(table, f"ask_px_{levels - 1}")
    low = np.nanpercentile(np.where(np.isfinite(deep_bid), deep_bid, bid), 1)
    high = np.nanpercentile(np.where(np.isfinite(deep_ask), deep_ask, ask), 99)
    edges_p = np.linspace(low, high, PRICE_BINS + 1)

    fig, (ax_px, ax_spread, ax_depth) = plt.subplots(
        3, 1, figsize=(12, 9), sharex=True, height_ratios=[2, 1, 3], layout="constrained"
    )
    ax_px.plot(times, ask, color="#c0392b", lw=0.8, label="best ask")
    ax_px.plot(times, bid, color="#1e8449", lw=0.8, label="best bid")
    ax_px.plot(times, mid, color="#2c3e50", lw=1.0, label="mid")
    ax_px.set_ylabel("price")
    ax_px.legend(loc="upper left", fontsize=8, ncols=3)
    ax_spread.plot(times, spread_bps, color="#8e44ad", lw=0.8)
    ax_spread.set_ylabel("spread (bps)")

    extent = (times[0], times[-1], edges_p[0], edges_p[-1])
    for side, cmap in (("bid", "Greens"), ("ask", "Reds")):
        grid = _depth_grid(table, side, levels, edges_t, edges_p)
        if not (grid > 0).any():
            continue
        masked = np.ma.masked_where(grid <= 0, grid)
        positive = grid[grid > 0]
        ax_depth.imshow(
            masked,
            origin="lower",
            aspect="auto",
            cmap=cmap,
            norm=LogNorm(vmin=max(positive.min(), np.percentile(positive, 2)), vmax=positive.max()),
            extent=(
                mdates.date2num(extent[0]),
                mdates.date2num(extent[1]),
                extent[2],
                extent[3],
            ),
            interpolation="nearest",
        )
    ax_depth.plot(times, mid, color="#2c3e50", lw=0.6)
    ax_depth.set_ylabel(f"price (depth of {levels} levels; colour = size)")
    ax_depth.set_xlabel("time (UTC)")

    spans = _invalid_spans(times, valid)
    for ax in (ax_px, ax_spread, ax_depth):
        for start, end in spans:
            ax.axvspan(start, end, color="#7f8c8d", alpha=0.3, lw=0)
    invalid_share = 1 - valid.mean()
    title = f"{pair}: {times[0].astype('datetime64[s]')} to {times[-1].astype('datetime64[s]')} UTC"
    title += f", {len(times)} rows"
    title += f", invalid {invalid_share:.1%} (grey)" if spans else ", no invalid spans"
    fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
