"""``kbook watch`` as a process: on a real terminal (tmux), through a pipe, and with bad input."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apis import V1, ApiCase

from kbook.api import Api
from kbook.feed import BookFeed
from kbook.segment import SegmentReader
from kbook.sim import Simulator, SimulatorConfig

KBOOK = [sys.executable, "-m", "kbook"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KBOOK_DEBUG", None)
    return env


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(
        SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, seed=5)
    ) as simulator:
        yield simulator


@pytest.fixture
def any_sim(case: ApiCase) -> Iterator[Simulator]:
    """A simulator of each API in turn."""
    with Simulator(case.sim_config(pairs=("XBT/USD",), rate=200.0, seed=5)) as simulator:
        yield simulator


# -- a real terminal ------------------------------------------------------------------------------


class Tmux:
    """A tmux server of our own (unique socket), killed at the end."""

    def __init__(self, tmux: str) -> None:
        self.tmux = tmux
        self.socket = f"kbooktest-{uuid.uuid4().hex[:10]}"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=_env(),
            check=True,
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "watch")

    def wait_screen(self, predicate: Callable[[str], bool], what: str, timeout: float = 10) -> str:
        """Poll the pane until ``predicate`` holds; its text."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.1)

    def kill(self) -> None:
        """Kill the server and remove its socket file (tmux leaves it behind)."""
        where = subprocess.run(
            [self.tmux, "-L", self.socket, "display-message", "-p", "#{socket_path}"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        subprocess.run(
            [self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=10
        )
        if where.endswith(self.socket):
            Path(where).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    found = shutil.which("tmux")
    if found is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the terminal test needs it")
    server = Tmux(found)
    try:
        yield server
    finally:
        server.kill()


def frames_per_second(screen: str) -> float:
    match = re.search(r"([\d.]+) frames/s", screen)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_terminal_view_updates_in_place_and_ctrl_c_exits_0(sim: Simulator, tmux: Tmux) -> None:
    command = " ".join(shlex.quote(part) for part in [*KBOOK, "watch", "XBT/USD", "--url", sim.url])
    shell = f"{command}; echo EXIT=$?"
    # One tmux command sequence, so that the pane is kept even if kbook exits at once.
    tmux(
        "new-session",
        "-d",
        "-s",
        "watch",
        "-x",
        "120",
        "-y",
        "40",
        shell,
        ";",
        "set-option",
        "-t",
        "watch",
        "remain-on-exit",
        "on",
    )
    screen = tmux.wait_screen(
        lambda s: "checksum ok" in s and frames_per_second(s) > 0 and "checksums ok 1" in s,
        "a live book with good checksums",
    )
    assert "BTC/USD  book-10  ws://127.0.0.1:" in screen
    assert len(V1.price.findall(screen)) >= 20  # 10 bids and 10 asks
    assert "\x1b" not in screen
    first = screen
    later = tmux.wait_screen(lambda s: s != first and "checksum ok" in s, "a redraw")
    assert later.count("BTC/USD  book-10") == 1  # redrawn in place, not scrolled
    tmux("send-keys", "-t", "watch", "C-c")
    final = tmux.wait_screen(lambda s: "EXIT=" in s, "the exit status")
    assert "EXIT=0" in final
    assert "kbook watch: stopped: " in final
    assert "Traceback" not in final


# -- a pipe ---------------------------------------------------------------------------------------


def blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


def best_prices(block: str) -> tuple[str, str]:
    lines = block.splitlines()
    row = lines[next(i for i, line in enumerate(lines) if "bid price" in line) + 1].split()
    return row[2], row[4]


@pytest.mark.slow
def test_pipe_replay_prints_plain_blocks_ending_with_the_final_book(
    capture_segment: Callable[[str], Path],
) -> None:
    segment = capture_segment("orderbook-v1.json")
    done = subprocess.run(
        [*KBOOK, "watch", "BTC/USD", "--from", str(segment), "--speed", "0"],
        capture_output=True,
        text=True,
        timeout=15,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "\x1b" not in done.stderr
    feed = BookFeed()
    for record in SegmentReader(segment):
        feed.on_message(record["msg"], record["recv_ns"])
    book = feed.books[("XBT/USD", "book-10")]
    last = blocks(done.stdout)[-1]
    assert best_prices(last) == (book.top_bids(1)[0][0], book.top_asks(1)[0][0])
    header = last.splitlines()[0]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  BTC/USD  book-10  replay .*", header
    )
    assert "checksum ok | " in last
    assert "checksums ok 979 failed 0" in last
    assert done.stderr == (
        "kbook watch: finished: 980 book frames of BTC/USD, checksums ok 979 failed 0, "
        "reconnects 0\n"
    )


@pytest.mark.slow
def test_closed_pipe_ends_quietly_with_exit_0(capture_segment: Callable[[str], Path]) -> None:
    segment = capture_segment("orderbook-v1.json")
    process = subprocess.Popen(
        [*KBOOK, "watch", "XBT/USD", "--from", str(segment), "--speed", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert process.stdout is not None
    assert "BTC/USD  book-10  replay" in process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert err.startswith("kbook watch: output closed: ")
    assert "Traceback" not in err


@pytest.mark.slow
def test_pipe_live_prints_a_block_a_second_and_sigint_exits_0(
    case: ApiCase, any_sim: Simulator
) -> None:
    # No --api: the watch follows the simulator's URL to its API.
    process = subprocess.Popen(
        [*KBOOK, "watch", "BTC/USD", "--url", any_sim.url, "--levels", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        lines: list[str] = []
        assert process.stdout is not None
        # Blocks end with an empty line, one a second: read two, and on to one with a good book.
        while sum(line == "\n" for line in lines) < 2 or "checksum ok | " not in "".join(lines):
            line = process.stdout.readline()
            assert line, "kbook watch ended early"
            lines.append(line)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    text = "".join(lines) + out
    assert "\x1b" not in text
    first, second = blocks(text)[:2]
    assert len(re.findall(r"^.* \| .*$", first, re.M)) >= 4  # status + header + 3 levels
    stamps = [time_of(block) for block in (first, second)]
    assert 0.5 < stamps[1] - stamps[0] < 2.0
    assert all("  BTC/USD  book-10  ws://127.0.0.1:" in block for block in (first, second))
    good = next(block for block in blocks(text) if "checksum ok | " in block)
    assert len(case.price.findall(good)) >= 6  # 3 bids and 3 asks, printed the API's way
    assert case.other.price.findall(text) == []
    assert err.strip().startswith("kbook watch: stopped: ")


def time_of(block: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(block.split()[0].replace("Z", "+00:00")).timestamp()


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["XBT/USD", "--depth", "42"], "--depth 42 is not one Kraken offers", 2),
        (["XBTUSD"], "pair 'XBTUSD' is not BASE/QUOTE", 2),
        (["XBT/USD", "--levels", "11"], "--levels 11 must be between 1 and the depth (10)", 2),
        (["XBT/USD", "--url", "http://x"], "--url 'http://x' is not a ws:// or wss:// address", 2),
        (["XBT/USD", "--from", "no/such/dir"], "no/such/dir: no such file or folder", 2),
        (["XBT/USD", "--url", "ws://127.0.0.1:1"], "cannot connect to ws://127.0.0.1:1", 1),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args: list[str], message: str, code: int) -> None:
    done = subprocess.run(
        [*KBOOK, "watch", *args], capture_output=True, text=True, timeout=15, env=_env()
    )
    assert done.returncode == code
    assert done.stderr.startswith(f"kbook: error: {message}")
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


@pytest.mark.slow
def test_pair_missing_from_the_recording_names_what_is_there(
    capture_segment: Callable[[str], Path],
) -> None:
    segment = capture_segment("orderbook-v1.json")
    for args, missing in (
        (["ETH/USD"], "ETH/USD book"),
        (["XBT/USD", "--depth", "100"], "BTC/USD book-100"),
    ):
        done = subprocess.run(
            [*KBOOK, "watch", *args, "--from", str(segment)],
            capture_output=True,
            text=True,
            timeout=15,
            env=_env(),
        )
        assert done.returncode == 2
        assert done.stderr == (
            f"kbook: error: the recording holds no {missing} (it holds: BTC/USD book-10)\n"
        )


def test_pair_kraken_refuses_is_one_line_and_exit_1(case: ApiCase, any_sim: Simulator) -> None:
    done = subprocess.run(
        [*KBOOK, "watch", "FOO/BAR", "--url", any_sim.url],
        capture_output=True,
        text=True,
        timeout=15,
        env=_env(),
    )
    assert done.returncode == 1
    assert done.stderr == (
        "kbook: error: cannot watch FOO/BAR: Kraken refused it "
        "(Currency pair not supported FOO/BAR)\n"
    )


def test_help_documents_every_option() -> None:
    done = subprocess.run(
        [*KBOOK, "watch", "--help"], capture_output=True, text=True, timeout=15, env=_env()
    )
    assert done.returncode == 0
    for option in ("--depth", "--levels", "--url", "--from", "--speed"):
        assert option in done.stdout
