"""A real Prometheus (Debian's ``prometheus`` package) scraping a recording once a second, and
``promtool`` checking the shipped alert rules."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from record_support import Background, fast_config, wait_until

from kbook.sim import Simulator, SimulatorConfig
from recorder.metrics import Metrics
from recorder.monitor import Monitor

RULES = Path(__file__).resolve().parents[1] / "deploy" / "kbook.rules.yml"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install prometheus; .ci/run does)")
    return path


def test_promtool_accepts_the_shipped_rules() -> None:
    checked = subprocess.run(
        [need("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout


def free_port() -> int:
    """A port free right now (Prometheus cannot be told to take port 0 and say which it got)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def prometheus(folder: Path, target: str) -> Iterator[str]:
    """Prometheus on 127.0.0.1 scraping ``target`` every second, with its own data folder;
    yields its base URL and stops it afterwards."""
    binary = need("prometheus")
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "kbook", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return []  # not up yet
    return list(body["data"]["result"])


@pytest.mark.slow
def test_prometheus_sees_frames_flowing(tmp_path: Path) -> None:
    need("prometheus")
    metrics = Metrics(tmp_path)
    port = metrics.serve("127.0.0.1", 0)
    rates: list[float] = []
    try:
        with Simulator(SimulatorConfig(pairs=("XBT/USD",), rate=100.0, seed=2)) as sim:
            config = fast_config(sim, tmp_path / "data", ("BTC/USD",))
            with (
                Background(config, Monitor(metrics)) as run,
                prometheus(tmp_path, f"127.0.0.1:{port}") as base,
            ):

                def frames_rate() -> bool:
                    result = query(base, 'rate(kbook_frames_total{pair="BTC/USD"}[5s])')
                    rates[:] = [float(r["value"][1]) for r in result]  # type: ignore[index]
                    return bool(rates) and rates[0] > 0

                wait_until(frames_rate, timeout=60, what="a non-zero rate(kbook_frames_total[5s])")
                assert query(base, "kbook_connected")[0]["value"][1] == "1"  # type: ignore[index]
                run.finish()
    finally:
        metrics.close()
    assert rates[0] > 10  # the simulator sends 100 updates a second
