"""What the simulator serves (``SimulatorConfig``) and what it reports sending (``SentFrame``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kbook.api import DEFAULT, Api, parse_api
from kbook.errors import UsageError
from kbook.pairs import parse_pair
from kbook.sim import protocol
from kbook.sim.market import canonical_pair

KINDS = (
    "status",
    "subscription",
    "snapshot",
    "update",
    "trade",
    "heartbeat",
    "pong",
    "error",
    "raw",
)
"""``SentFrame.kind`` values: systemStatus, subscriptionStatus (ok or error), book snapshot, book
update, trades (v2: the snapshot of recent trades too), heartbeat, pong, ``{"event":"error"}``,
and anything that is not JSON. In v2: the status
channel, (un)subscribe answers, book frames, heartbeat, pong, and other failed requests."""

BOOK_KINDS = ("snapshot", "update")


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One text frame the simulator sent, in send order."""

    connection: int
    """1-based number of the connection, in the order connections were accepted."""
    text: str
    pair: str | None
    """The pair as printed, for book frames and per-pair subscriptionStatus; else None."""
    kind: str
    """One of ``KINDS``."""


@dataclass(frozen=True)
class SimulatorConfig:
    """What the simulator serves; validated on construction (``UsageError`` naming the field)."""

    pairs: tuple[str, ...] = ("XBT/USD", "ETH/USD", "XDG/USD", "SOL/USD")
    """Pairs served (either spelling; stored as v1 names). Empty: every well-formed pair.
    Ignored in playback, where the capture decides."""
    rate: float = 200.0
    """Updates per second per connection, across its subscriptions; 0 = as fast as possible."""
    seed: int = 7
    heartbeat_interval: float = 1.0
    idle_timeout: float = 60.0
    """Close a connection after this many seconds without a message from the client."""
    btc: str = "echo-xbt"
    """``echo-xbt``, ``echo-btc`` or ``reject``: how v1 answers ``BTC/...`` and ``DOGE/...``.
    Not used in v2, which knows only ``BTC/...`` and ``DOGE/...`` and rejects ``XBT``/``XDG``."""
    api: str | None = None
    """``v1`` or ``v2``: the WebSocket API spoken (``kbook.sim.dialect``), whatever the URL path;
    None: v2 (``kbook.api.DEFAULT``), or v1 to play back a ``capture``, which is v1 only."""
    capture: Path | None = None
    """A segment or capture to play back instead of the simulated market."""
    speed: float = 1.0
    """Playback speed factor; ``math.inf`` plays as fast as the client reads."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port."""
    record: bool = True
    """Keep every frame in ``Simulator.sent`` (tests); the CLI turns it off for long runs."""

    def __post_init__(self) -> None:
        pairs = (self.pairs,) if isinstance(self.pairs, str) else tuple(self.pairs)
        canonical = tuple(dict.fromkeys(canonical_pair(parse_pair(p)) for p in pairs))
        object.__setattr__(self, "pairs", canonical)
        if self.api is not None:
            object.__setattr__(self, "api", parse_api(self.api))
        else:
            object.__setattr__(self, "api", Api.V1 if self.capture is not None else DEFAULT)
        if self.btc not in protocol.BTC_MODES:
            modes = ", ".join(protocol.BTC_MODES)
            raise UsageError(f"--btc {self.btc!r} is not one of {modes}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port (0 to 65535; 0 picks one)")
        if not self.rate >= 0:
            raise UsageError(f"--rate {self.rate} must be zero (unlimited) or positive")
        if not self.speed > 0:
            raise UsageError(f"--speed {self.speed} must be positive")
        if not self.heartbeat_interval > 0:
            raise UsageError(f"heartbeat interval {self.heartbeat_interval} must be positive")
        if not self.idle_timeout > 0:
            raise UsageError(f"--idle-timeout {self.idle_timeout} must be positive")
        if self.capture is not None:
            object.__setattr__(self, "capture", Path(self.capture))
            if self.api != Api.V1:
                raise UsageError("--from plays back v1 recordings only; leave out --api v2")
