"""``kbook simulate`` as a user runs it: a subprocess that prints its URL first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sim_support import Client

from kbook.api import Api, api_of_url

KBOOK = Path(sys.executable).parent / "kbook"


def start(*args: str, api: Api = Api.V1) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [str(KBOOK), "simulate", "--port", "0", "--api", api, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_simulate_prints_url_first_and_stops_after_duration() -> None:
    process, url = start("--duration", "2s", "--rate", "500")
    assert url.startswith("ws://127.0.0.1:")
    assert api_of_url(url) is Api.V1  # no /v2 path
    with Client(url) as client:
        client.subscribe(["BTC/USD"])
        ack = client.recv()
        assert ack["pair"] == "XBT/USD"  # the default BTC mode: echo XBT/USD
        client.read_updates(20)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out == ""
    assert "Traceback" not in err
    assert "kbook simulate: stopped" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_simulate_stops_cleanly_on_ctrl_c_and_sigterm(sig: signal.Signals) -> None:
    process, url = start("--rate", "100")
    with Client(url) as client:
        assert client.status["event"] == "systemStatus"
    process.send_signal(sig)
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err


def test_simulate_fault_flags(tmp_path: Path) -> None:
    process, url = start("--duration", "5s", "--drop-after", "3", "--rate", "1000")
    with Client(url) as client:
        client.subscribe(["ETH/USD"])
        assert client.read_to_end() is None
        assert sum(text.startswith("[") for text in client.texts) == 3
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--btc", "nope"], "--btc 'nope' is not one of echo-xbt, echo-btc, reject"),
        (["--from", "/no/such/capture.json"], "/no/such/capture.json: no such capture file"),
        (["--duration", "soon"], "duration 'soon' is not a number with a unit"),
        (["--pairs", "XBTUSD"], "pair 'XBTUSD' is not BASE/QUOTE"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
    ],
)
def test_simulate_bad_input_is_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [str(KBOOK), "simulate", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("kbook: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_help_documents_every_option() -> None:
    env = {**os.environ, "COLUMNS": "200"}  # rich shortens option names in narrow terminals
    result = subprocess.run(
        [str(KBOOK), "simulate", "--help"], capture_output=True, text=True, timeout=20, env=env
    )
    assert result.returncode == 0
    for option in ("--port", "--pairs", "--rate", "--seed", "--duration", "--btc", "--from"):
        assert option in result.stdout
    for option in ("--drop-after", "--stall-after", "--bad-checksum-at", "--maintenance-after"):
        assert option in result.stdout
