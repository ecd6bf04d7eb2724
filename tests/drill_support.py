"""The reliability drill: many faults at random points, repeated, and an account of every frame.

Shared by ``test_drill_*.py`` and the soak run (``pytest -m soak``). Knobs, all optional:

- ``KBOOK_DRILL_SEED``: the seed of every random choice (fault kinds, order and points; kill
  points); the simulator's market is seeded too, so a failing seed can be run again;
- ``KBOOK_DRILL_DROPS``: plain connection drops in the fault drill (default 20; other faults
  scale with it);
- ``KBOOK_DRILL_KILLS``: ``kill -9`` cycles in the kill drill (default 10);
- ``KBOOK_SOAK_SECONDS``: how long the soak repeats the drills (default 300).

Every drill ends with a ``DrillSummary``: printed (``pytest -s``), written as JSON to
``<pytest basetemp>/drill-summary.json``, and listed at the end of the test session.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from record_support import Background, Output, match_connections, read_output, wait_until

from kbook.api import Api
from kbook.pairs import common_name, file_name
from kbook.segment import PARTIAL_SUFFIX, SegmentReader, find_segments
from kbook.sim import SentFrame, Simulator, SimulatorConfig
from kbook.units import MS, SECOND
from kbook.verify import verify_paths
from recorder import RecordConfig
from replay import replay_table
from replay.options import parse_every

_FRAME = re.compile(rb'^\{"recv_ns":(\d+),"seq":(\d+),"msg":(.*)\}$', re.DOTALL)

SEED = int(os.environ.get("KBOOK_DRILL_SEED", "20261121"))
DROPS = int(os.environ.get("KBOOK_DRILL_DROPS", "20"))
KILLS = int(os.environ.get("KBOOK_DRILL_KILLS", "10"))
SOAK_SECONDS = float(os.environ.get("KBOOK_SOAK_SECONDS", "300"))

PAIRS = ("XBT/USD", "ETH/USD", "XDG/USD", "SOL/USD")
DEPTH = 100
GRID = "5ms"
"""Replay grid of the drills: fine enough that most reconnect gaps cover a grid time."""

DRILL_TIMING: dict[str, Any] = {
    "stall_timeout_ns": 600 * MS,
    "immediate_retries": 3,
    "backoff_base_ns": 20 * MS,
    "backoff_cap_ns": 100 * MS,
    "maintenance_delay_ns": 250 * MS,
    "subscribe_timeout_ns": 2 * SECOND,
    "resubscribe_interval_ns": 100 * MS,
    "rate_limit_delay_ns": 150 * MS,
    "flush_interval_ns": 200 * MS,
    "tick_ns": 50 * MS,
    "connect_timeout_ns": 2 * SECOND,
    "connect_retries": 1000,
    "quiet": True,
}
"""Kraken's timings shrunk so that a stall, a maintenance or a refusal costs a fraction of a
second; the logic exercised is the same."""

KILL_FLUSH_S = 1.0
"""``kbook record``'s flush interval (``RecordConfig.flush_interval_ns``): the documented bound
on what ``kill -9`` may lose, plus one tick (0.1 s)."""
KILL_SLACK_S = 0.5
"""Scheduling slack on a shared two-core machine, added to the bound before failing."""


# -- the account ----------------------------------------------------------------------------------


@dataclass
class DrillSummary:
    """What one drill did; ``frames_lost`` must be 0 except within the kill -9 bound."""

    drill: str
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    frames_sent: int = 0
    """Frames the simulator sent while the recorder was connected."""
    frames_recorded: int = 0
    frames_lost: int = 0
    lost_within_bound: int = 0
    """kill -9 only: frames lost at a kill, each within the flush bound (not counted as lost)."""
    max_loss_window_s: float = 0.0
    """kill -9 only: the longest stretch of receive time a kill took with it."""
    bound: str = "kill -9 flush bound"
    """What ``lost_within_bound`` is allowed by."""
    checksums_ok: int = 0
    checksums_failed: int = 0
    checksums_failed_after_resync: int = 0
    """Failures beyond the injected wrong checksums: must be 0."""
    connections: int = 0
    replay_rows: int = 0
    replay_invalid_rows: int = 0
    seconds: float = 0.0

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    def add(self, other: DrillSummary) -> None:
        """Fold another round into this one (the soak)."""
        self.faults.update(other.faults)
        for name in (
            "frames_sent",
            "frames_recorded",
            "frames_lost",
            "lost_within_bound",
            "checksums_ok",
            "checksums_failed",
            "checksums_failed_after_resync",
            "connections",
            "replay_rows",
            "replay_invalid_rows",
            "seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_loss_window_s = max(self.max_loss_window_s, other.max_loss_window_s)

    def line(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()))
        text = (
            f"drill {self.drill} (seed {self.seed}{'+' if 'soak' in self.drill else ''}): "
            f"{self.faults_injected} faults injected "
            f"({kinds}); frames sent {self.frames_sent}, recorded {self.frames_recorded}, "
            f"lost {self.frames_lost}"
        )
        if self.lost_within_bound:
            text += f" (+{self.lost_within_bound} within the {self.bound}"
            if self.max_loss_window_s:
                text += f", longest {self.max_loss_window_s:.2f} s"
            text += ")"
        return text + (
            f"; checksums ok {self.checksums_ok}, failed {self.checksums_failed} "
            f"(after resync: {self.checksums_failed_after_resync}); "
            f"{self.connections} connections; replay rows {self.replay_rows} "
            f"({self.replay_invalid_rows} invalid); {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = dict(sorted(self.faults.items()))
        data["faults_injected"] = self.faults_injected
        return data


REPORTS: list[DrillSummary] = []
"""Every summary of this session, listed by ``conftest.pytest_terminal_summary``."""


def report(summary: DrillSummary, basetemp: Path) -> Path:
    """Print the summary, keep it for the session's end, and write every summary so far as JSON."""
    REPORTS.append(summary)
    print(f"\n{summary.line()}")
    path = basetemp / "drill-summary.json"
    path.write_bytes(
        orjson.dumps([s.to_json() for s in REPORTS], option=orjson.OPT_INDENT_2) + b"\n"
    )
    return path


# -- the recorder against the simulator, in this process -------------------------------------------


def drill_simulator(seed: int, rate: float = 2000.0) -> Simulator:
    """The four pairs at ``rate`` updates/s; heartbeats well inside the drill's stall timeout."""
    return Simulator(
        SimulatorConfig(api=Api.V1, pairs=PAIRS, rate=rate, seed=seed, heartbeat_interval=0.2)
    )


def drill_config(sim: Simulator, out: Path, **overrides: Any) -> RecordConfig:
    settings = {"depth": DEPTH, **DRILL_TIMING, **overrides}
    return RecordConfig(pairs=PAIRS, out=out, url=sim.url, **settings)


def connection_ready(sim: Simulator, connection: int) -> bool:
    """True once ``connection`` is the newest and has sent the snapshot of every pair."""
    return sim.connections == connection and sim.count("snapshot", connection) >= len(PAIRS)


FAULT_MIX = {
    "drop": 1.0,
    "stall": 0.15,
    "maintenance": 0.15,
    "bad_checksum": 0.2,
    "bad_checksum+rate_limit": 0.05,
    "rate_limit+drop": 0.1,
    "refuse+drop": 0.15,
    "non_json": 0.1,
}
"""Faults per plain drop in the mixed drill (``KBOOK_DRILL_DROPS`` plain drops; at least one of
each other kind)."""


def fault_schedule(rng: random.Random, drops: int) -> list[str]:
    kinds = [kind for kind, share in FAULT_MIX.items() for _ in range(max(1, round(share * drops)))]
    rng.shuffle(kinds)
    return kinds


class FaultDriver:
    """Arms one fault at a time at a random point and waits until the recorder came through it."""

    def __init__(self, sim: Simulator, run: Background, rng: random.Random) -> None:
        self.sim = sim
        self.run = run
        self.rng = rng
        self.faults: Counter[str] = Counter()
        self.bad_checksums = 0

    def inject(self, kind: str) -> None:
        sim, faults, rng = self.sim, self.sim.faults, self.rng
        conn = sim.connections
        point = rng.randint(0, 300)  # book frames let through before the fault fires
        if kind.startswith("bad_checksum"):
            failed = self._failed()
            snapshots = sim.count("snapshot", conn)
            if kind.endswith("+rate_limit"):
                faults.rate_limit_next_subscribe()
            faults.bad_checksum_at(point + 1)
            sim.wait_for(lambda s: s.count("snapshot", conn) > snapshots, timeout=15)
            assert self._failed() == failed + 1, "the wrong checksum was not noticed"
            self.bad_checksums += 1
        elif kind == "non_json":
            raw = sim.count("raw")
            faults.non_json_after(point)
            sim.wait_for(lambda s: s.count("raw") > raw, timeout=15)
        else:
            if kind == "rate_limit+drop":
                faults.rate_limit_next_subscribe()
            elif kind == "refuse+drop":
                faults.refuse_connections(count=rng.randint(1, 5))
            arm = {
                "stall": lambda n: faults.stall_after(n),
                "maintenance": faults.maintenance_after,
            }.get(kind, faults.drop_after)
            arm(point)
            sim.wait_for(lambda s: connection_ready(s, conn + 1), timeout=15)
        self.faults[kind] += 1
        self._settle()

    def finish(self) -> None:
        """End the last connection from the simulator's side and wait until all is recorded.

        The simulator refuses every reconnection from then on, so every frame it sent went to a
        connection that it closed itself, after the frame: the recorder can have read them all.
        """
        self.sim.faults.refuse_connections(seconds=600)
        self.sim.faults.drop_after(0)
        recorder = self.run.recorder
        wait_until(lambda: recorder.reconnects >= self.sim.connections, 10, "the last drop")
        deadline = time.monotonic() + 5  # a shortfall is measured and reported afterwards
        while recorder.frames < self.sim.frames_sent and time.monotonic() < deadline:
            time.sleep(0.01)

    def _failed(self) -> int:
        return sum(stats.checksums_failed for stats in self.run.recorder.feed.stats.values())

    def _settle(self) -> None:
        """Let a few updates through, so that the next fault is armed on a settled connection."""
        conn = self.sim.connections
        updates = self.sim.count("update", conn)
        self.sim.wait_for(lambda s: s.count("update", conn) >= updates + 5, timeout=15)


def run_fault_drill(out: Path, seed: int, drops: int, summary_name: str = "faults") -> DrillSummary:
    """Drops, stalls, maintenance, wrong checksums, rate limits and refusals in one run."""
    began = time.monotonic()
    rng = random.Random(f"kbook-drill:{seed}:faults")
    with drill_simulator(seed) as sim:
        config = drill_config(sim, out, max_segment_bytes=150_000)
        with Background(config) as run:
            sim.wait_for(lambda s: connection_ready(s, 1), timeout=10)
            driver = FaultDriver(sim, run, rng)
            for kind in fault_schedule(rng, drops):
                driver.inject(kind)
            driver.finish()
            run.finish(timeout=15)
        sent = sim.sent
        connections = sim.connections
    summary = DrillSummary(summary_name, seed, driver.faults, connections=connections)
    check_recording(out, sent, summary, driver.bad_checksums)
    summary.seconds = time.monotonic() - began
    return summary


def check_recording(
    out: Path, sent: list[SentFrame], summary: DrillSummary, bad_checksums: int
) -> Output:
    """Every sent frame recorded in order; snapshots after reconnects; checksums; replay gaps."""
    output = read_output(out)
    assert output.problems == []
    lost = match_connections(output.texts, sent)
    summary.frames_sent = len(sent)
    summary.frames_recorded = len(output.texts)
    summary.frames_lost = sum(lost.values())
    assert sorted(output.frames) == list(range(len(output.frames))), "seq has holes or repeats"
    for pair in PAIRS:
        assert_snapshot_after_every_connect(output, pair, summary.connections)
    report_ = verify_paths([out / "raw"])
    assert report_.problems == []
    summary.checksums_ok = report_.checksums_ok
    summary.checksums_failed = report_.checksums_failed
    summary.checksums_failed_after_resync = report_.checksums_failed - bad_checksums
    files = {pair: output.files_of(file_name(pair)) for pair in PAIRS}
    check_replay(out, files, output.lines, summary)
    return output


def assert_snapshot_after_every_connect(output: Output, pair: str, connections: int) -> None:
    """In ``pair``'s stream, each ``connect`` is followed by a snapshot before any update."""
    connects = 0
    expecting = False
    for path in output.files_of(file_name(pair)):
        for record in output.lines[path]:
            meta, msg = record.get("meta"), record.get("msg")
            if meta is not None and meta["type"] == "connect":
                connects += 1
                expecting = True
            elif type(msg) is list and expecting:
                assert "as" in msg[1] or "bs" in msg[1], f"{pair}: update before the snapshot"
                expecting = False
    assert connects == connections, f"{pair}: {connects} connects for {connections} connections"


# -- replay against a reference of when each book is valid ----------------------------------------


Lines = dict[Path, list[dict[str, Any]]]
"""The decoded lines of each segment."""


def validity_timeline(files: list[Path], lines: Lines, pair: str) -> list[tuple[int, bool]]:
    """``(clock, valid)`` after each line of ``pair``'s stream, computed from the recording alone.

    Invalid from a ``connect``/``disconnect`` line, a ``subscriptionStatus`` of the pair, a frame
    the recorder logged as a checksum mismatch, or the end of a segment cut short (``kill -9``),
    until the next snapshot or checkpoint. The clock is the largest receive time so far.
    """
    wire = {common_name(p): p for p in PAIRS}[common_name(pair)]
    mismatches = _mismatched_frames(files, lines)
    events: list[tuple[int, bool]] = []
    clock = 0
    valid = False
    run = -1
    for path in files:
        for record in lines[path]:
            clock = max(clock, record["recv_ns"])
            meta, msg = record.get("meta"), record.get("msg")
            if meta is not None:
                run += meta["type"] == "session_start"
                if meta["type"] in ("connect", "disconnect"):
                    valid = False
                elif meta["type"] == "checkpoint" and meta["pair"] == wire:
                    valid = True
            elif type(msg) is list and msg[-1] == wire:
                if "as" in msg[1] or "bs" in msg[1]:
                    valid = True
                elif (run, record["seq"]) in mismatches:
                    valid = False
            elif type(msg) is dict and _voids(msg, wire):
                valid = False
            events.append((clock, valid))
        if path.name.endswith(PARTIAL_SUFFIX):
            valid = False
            events.append((clock, valid))
    return events


def _mismatched_frames(files: list[Path], lines: Lines) -> set[tuple[int, int]]:
    """(run, seq) of every frame the recorder logged a ``checksum_mismatch`` for."""
    found = set()
    run = -1
    for path in files:
        for record in lines[path]:
            meta = record.get("meta")
            if meta is not None:
                run += meta["type"] == "session_start"
                if meta["type"] == "checksum_mismatch":
                    found.add((run, meta["frame_seq"]))
    return found


def _voids(msg: dict[str, Any], wire: str) -> bool:
    """A ``subscriptionStatus`` (un)subscribing ``wire``: its book waits for a new snapshot."""
    status = msg.get("status") in ("subscribed", "unsubscribed")
    return msg.get("event") == "subscriptionStatus" and msg.get("pair") == wire and status


def check_replay(
    out: Path, files: dict[str, list[Path]], lines: Lines, summary: DrillSummary, every: str = GRID
) -> pa.Table:
    """Replay every segment under ``out``: each pair's rows are consecutive grid times, valid
    exactly where ``validity_timeline`` says (``files``: each pair's segments in order)."""
    every_ns = parse_every(every)
    table = replay_table([out / "raw"], every=every, levels=10)
    for pair in PAIRS:
        name = common_name(pair)
        rows = table.filter(pc.equal(table.column("pair"), name))
        ts = rows.column("ts").cast(pa.int64()).to_pylist()
        valid = rows.column("valid").to_pylist()
        assert ts, f"{name}: no rows"
        assert all(b - a == every_ns for a, b in itertools.pairwise(ts)), (
            f"{name}: rows are not consecutive grid times"
        )
        events = validity_timeline(files[pair], lines, pair)
        expected = []
        index, state = 0, False
        for t in ts:
            while index < len(events) and events[index][0] <= t:
                state = events[index][1]
                index += 1
            expected.append(state)
        wrong = [(t, v) for t, v, e in zip(ts, valid, expected, strict=True) if v != e]
        assert not wrong, f"{name}: {len(wrong)} rows differ from the gaps, first {wrong[:3]}"
        summary.replay_rows += len(ts)
        summary.replay_invalid_rows += valid.count(False)
    return table


# -- kbook record as a process, killed with SIGKILL -------------------------------------------------


def start_record_process(sim: Simulator, out: Path) -> subprocess.Popen[bytes]:
    """``kbook record`` as cron would start it (default timings: flush every second)."""
    command = [sys.executable, "-m", "kbook", "record", *PAIRS, "--depth", str(DEPTH)]
    command += ["--out", str(out), "--url", sim.url, "--quiet"]
    env = {key: value for key, value in os.environ.items() if key != "KBOOK_DEBUG"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def file_hashes(out: Path) -> dict[Path, str]:
    """sha256 of every file the recorder left under ``out/raw``."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((out / "raw").rglob("*"))
        if path.is_file()
    }


@dataclass
class RunOutput:
    """The frames one recorder run left, verbatim, by ``seq`` (which restarts with every run)."""

    frames: dict[int, str] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [self.frames[seq] for seq in sorted(self.frames)]


@dataclass
class Runs:
    """Everything under ``out`` after several recorder runs, told apart by ``session_start``."""

    runs: dict[str, RunOutput] = field(default_factory=dict)
    """By ``run_id``."""
    files: dict[str, list[Path]] = field(default_factory=dict)
    """Each pair's segments, in the order readers take them."""
    lines: Lines = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    by_pair: dict[str, list[str]] = field(default_factory=dict)
    """Each pair's frames, verbatim, in the order its segments hold them (all runs)."""


def read_runs(out: Path) -> Runs:
    """Read every segment under ``out`` from its raw line bytes, run by run."""
    result = Runs()
    for pair in PAIRS:
        run: RunOutput | None = None
        files = result.files[pair] = find_segments([out / "raw" / file_name(pair)])
        pair_texts = result.by_pair[pair] = []
        for path in files:
            reader = SegmentReader(path)
            records = result.lines[path] = []
            for _, line in reader.raw_lines():
                record = orjson.loads(line)
                records.append(record)
                meta = record.get("meta", {})
                if meta.get("type") == "session_start":
                    run = result.runs.setdefault(meta["run_id"], RunOutput())
                assert run is not None, f"{path}: lines before any session_start"
                if "seq" not in record or "meta" in record:
                    continue
                match = _FRAME.match(line)
                text = match.group(3).decode() if match else record["raw"]
                assert run.frames.setdefault(record["seq"], text) == text
                pair_texts.append(text)
            result.problems += [str(problem) for problem in reader.problems]
    return result


def sent_to_pair(sent: list[SentFrame], pair: str) -> list[str]:
    """What belongs in ``pair``'s stream, in send order: its own frames (book frames and its
    subscriptionStatus) and every frame that names no pair, which the recorder copies to all."""
    return [f.text for f in sent if f.pair is None or common_name(f.pair) == common_name(pair)]


def sent_by_connection(sent: list[SentFrame]) -> dict[int, list[str]]:
    by_conn: dict[int, list[str]] = {}
    for frame in sent:
        by_conn.setdefault(frame.connection, []).append(frame.text)
    return by_conn


# -- the kill -9 drill --------------------------------------------------------------------------------

TAIL_PROBLEMS = ("torn zstd frame at the end", "last line cut short", "no data: ")
"""What a kill may leave at the end of a segment (or an empty one: killed before its first
flush); nothing else may be reported."""


def run_kill_drill(out: Path, seed: int, kills: int) -> DrillSummary:
    """``kill -9`` of ``kbook record`` at random points, restarted each time as cron would."""
    began = time.monotonic()
    rng = random.Random(f"kbook-drill:{seed}:kill")
    summary = DrillSummary("kill -9", seed)
    kept: dict[Path, str] = {}
    killed: dict[int, tuple[float, int]] = {}
    """Connection -> (when it was killed, frames sent over all connections by then)."""
    samples: list[tuple[float, int]] = []
    with drill_simulator(seed, rate=1000.0) as sim:
        for run in range(kills):
            connection = sim.connections + 1
            # Frames to let through before the kill (-1: as soon as it connects): before, around
            # and after the first flush (about 1 s); the last run always outlives one, so that
            # there is something to replay.
            late = rng.randint(1300, 2000)
            points = [-1, rng.randint(0, 300), rng.randint(300, 1200), late, late]
            point = late if run == kills - 1 else rng.choice(points)
            process = start_record_process(sim, out)
            try:
                sim.wait_for(lambda s, c=connection: s.connections >= c, timeout=20)
                while sim.count(connection=connection) < point + 1:
                    samples.append((time.monotonic(), sim.frames_sent))
                    time.sleep(0.005)
                    assert process.poll() is None, process.communicate()[1]
                samples.append((time.monotonic(), sim.frames_sent))
                process.kill()
                killed[connection] = samples[-1]
            finally:
                process.kill()
                process.communicate(timeout=10)
            summary.faults["kill -9"] += 1
            hashes = file_hashes(out)
            changed = {path for path, digest in kept.items() if hashes.get(path) != digest}
            assert not changed, f"a later run changed or removed {sorted(changed)}"
            kept.update(hashes)
        sent = sim.sent
    assert len(kept) >= len(PAIRS), "the runs left (almost) nothing behind"
    summary.connections = len(killed)
    runs = read_runs(out)
    assert all(problem.split(": ", 1)[1].startswith(TAIL_PROBLEMS) for problem in runs.problems)
    account_for_kills(runs, sent, killed, samples, summary)
    report_ = verify_paths([out])
    assert all(p.reason.startswith(TAIL_PROBLEMS) for p in report_.problems), report_.problems
    summary.checksums_ok = report_.checksums_ok
    summary.checksums_failed = report_.checksums_failed
    summary.checksums_failed_after_resync = report_.checksums_failed
    check_replay(out, runs.files, runs.lines, summary)
    summary.seconds = time.monotonic() - began
    return summary


def account_for_kills(
    runs: Runs,
    sent: list[SentFrame],
    killed: dict[int, tuple[float, int]],
    samples: list[tuple[float, int]],
    summary: DrillSummary,
) -> None:
    """Match each run to its connection and count what each kill took, against the bound."""
    by_conn: dict[int, list[tuple[int, str]]] = {}
    for index, frame in enumerate(sent):
        by_conn.setdefault(frame.connection, []).append((index, frame.text))
    first_text = {frames[0][1]: conn for conn, frames in by_conn.items()}
    recorded = {first_text[run.texts[0]]: run.texts for run in runs.runs.values() if run.frames}
    bound = KILL_FLUSH_S + 0.1 + KILL_SLACK_S
    for conn, (killed_at, sent_by_kill) in killed.items():
        frames = [(index, text) for index, text in by_conn[conn] if index < sent_by_kill]
        texts = recorded.get(conn, [])
        assert texts == [text for _, text in by_conn[conn][: len(texts)]], (
            f"connection {conn}: the recording is not the start of what was sent"
        )
        summary.frames_sent += len(frames)
        summary.frames_recorded += min(len(texts), len(frames))
        missing = frames[len(texts) :]
        if not missing:
            continue
        window = killed_at - _sent_time(samples, missing[0][0])
        summary.max_loss_window_s = max(summary.max_loss_window_s, window)
        if window <= bound:
            summary.lost_within_bound += len(missing)
        else:
            summary.frames_lost += len(missing)


def _sent_time(samples: list[tuple[float, int]], index: int) -> float:
    """The first sample at which frame ``index`` (over all connections) had been sent."""
    return next((moment for moment, count in samples if count > index), samples[-1][0])
