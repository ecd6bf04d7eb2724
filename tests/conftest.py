"""Shared fixtures: the real Kraken captures in tests/data/captures, as kbook segments."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apis import CASES, ApiCase

from kbook.api import Api
from kbook.captures import capture_to_segment
from kbook.sim import Simulator, SimulatorConfig

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
"""Real Kraken captures, test data kept in the repository (``PROVENANCE.md`` says where from)."""
V1_CAPTURES = {
    "KRAKEN.ws.50.0": 4269,
    "orderbook-v1.json": 979,
    "XDG-USD_book-10.jsonl": 14,
    "LUNA-EUR_book-10.jsonl": 1,
    "GST-EUR_book-10.jsonl": 1,
}
"""Each v1 capture with its number of book updates."""


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    return CAPTURES


@pytest.fixture
def capture_segment(captures_dir: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Factory: the named capture written as a bare segment in ``tmp_path``."""

    def make(name: str) -> Path:
        return capture_to_segment(captures_dir / name, tmp_path / f"{name}.jsonl.zst")

    return make


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A started Kraken v1 simulator on 127.0.0.1, a free port."""
    with Simulator(SimulatorConfig(api=Api.V1)) as sim:
        yield sim


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the reliability drills' summaries (``drill_support.REPORTS``) at the end of a run."""
    drills = sys.modules.get("drill_support")
    reports = getattr(drills, "REPORTS", [])
    if reports:
        terminalreporter.section("reliability drills")
        for summary in reports:
            terminalreporter.write_line(summary.line())


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> ApiCase:
    """Each of Kraken's APIs in turn, with what differs between them (tests/apis.py)."""
    return request.param


@pytest.fixture(autouse=True)
def survey_cache_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test its own survey cache (``replay.survey_cache``), never the user's: a test that
    rewrites a segment in place within the file system's clock tick must not meet the facts of
    the old one."""
    home = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("KBOOK_SURVEY_CACHE", raising=False)
    return home
