"""``kbook plot``'s figure, checked on what it draws: every level inside the price axis, a colour
bar per side, prices as steps, and heatmap cells that never reach into an invalid span."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kbook.plot import column_starts, draw_book, invalid_spans
from kbook.units import SECOND
from replay.columns import file_schema

pytest.importorskip("matplotlib")

START = 1_763_683_200 * SECOND


def snapshot_table(rows: int, invalid: range, outlier: float) -> pa.Table:
    """Two levels a side, one row a second; rows in ``invalid`` void; one deep bid at ``outlier``."""
    schema = file_schema(2)
    valid = [i not in invalid for i in range(rows)]
    columns: dict[str, list[object]] = {"ts": [START + i * SECOND for i in range(rows)]}
    columns["valid"] = valid
    for i in range(rows):
        mid = 100.0 + (i % 4)
        for level in range(2):
            for name, value in (
                (f"bid_px_{level}", mid - 0.5 - level),
                (f"bid_sz_{level}", 1.0 + level),
                (f"ask_px_{level}", mid + 0.5 + level),
                (f"ask_sz_{level}", 2.0 + level),
            ):
                columns.setdefault(name, []).append(value if valid[i] else None)
    columns["bid_px_1"][0] = outlier
    columns["updates"] = [1] * rows
    columns["checksum_failures"] = [0] * rows
    columns["last_update"] = columns["ts"]
    columns["exch_ts"] = [t if ok else None for t, ok in zip(columns["ts"], valid, strict=True)]
    columns["depth"] = [10 if ok else None for ok in valid]
    columns["source"] = ["v2 book-10" if ok else None for ok in valid]
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)


def test_spans_and_columns_follow_the_rows() -> None:
    t_ns = np.array([0, 10, 20, 30, 40, 50])
    valid = np.array([True, False, False, True, True, False])
    assert invalid_spans(t_ns, valid) == [(10, 30), (50, 60)]  # the last row lasts one step
    assert column_starts(valid, 4).tolist() == [0, 1, 3, 4, 5]  # cut at each change of validity


def test_the_figure_shows_every_level_sizes_steps_and_clean_gaps() -> None:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.collections import QuadMesh

    table = snapshot_table(12, range(5, 8), outlier=60.0)
    fig = draw_book(table, "BTC/USD")
    try:
        ax_px, ax_spread, ax_depth, *bars = fig.axes
        assert sorted(bar.get_ylabel() for bar in bars) == ["ask size", "bid size"]
        low, high = ax_depth.get_ylim()
        assert low <= 60.0  # the deep outlier bid: nothing is clipped
        assert high >= 104.5  # the deepest ask
        for line in ax_px.get_lines() + ax_spread.get_lines():
            assert line.get_drawstyle() == "steps-post"
        gap = (
            mdates.date2num(np.datetime64(START + 5 * SECOND, "ns")),
            mdates.date2num(np.datetime64(START + 8 * SECOND, "ns")),
        )
        meshes = [c for c in ax_depth.collections if isinstance(c, QuadMesh)]
        assert len(meshes) == 2
        for mesh in meshes:
            x = mesh.get_coordinates()[0, :, 0]
            data = np.ma.getmaskarray(mesh.get_array().reshape(-1, len(x) - 1))
            drawn = ~data.all(axis=0)
            assert drawn.any()
            for left, right, shown in zip(x[:-1], x[1:], drawn, strict=True):
                if shown:
                    assert right <= gap[0] + 1e-9 or left >= gap[1] - 1e-9, (left, right, gap)
            assert np.isclose(x, gap[1]).any()  # a column starts where the gap ends
    finally:
        plt.close(fig)
