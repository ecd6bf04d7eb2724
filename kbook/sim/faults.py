"""Faults on demand: the ways Kraken's feed goes wrong, armed from tests or the command line.

Each per-connection fault counts *book data frames* (snapshots and updates) sent on the connection
it is attached to, from the moment it is armed: ``drop_after(3)`` lets exactly three more book
frames out, then cuts the TCP connection. A fault attaches to the current connection (the newest
one still open) or, when none is open, to the next one accepted. With ``repeat=True`` it is armed
again on every later connection too (the CLI's ``--repeat-faults``). Arming the same kind twice on
one connection replaces the earlier arming.

``Faults`` is a thin, thread-safe front: every call runs in the simulator's event loop and has taken
effect when it returns, so "n more frames" counts from the moment of the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

DROP = "drop"
STALL = "stall"
BAD_CHECKSUM = "bad_checksum"
NON_JSON = "non_json"
MALFORMED = "malformed"
MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class Fault:
    """One armed per-connection fault."""

    kind: str
    n: int
    """Book data frames to let through first (for ``bad_checksum``: the n-th next update)."""
    seconds: float | None = None
    """How long a stall lasts; None stalls until the client goes away."""
    repeat: bool = False


class FaultTarget(Protocol):
    """What ``Faults`` drives: the simulator's server, called inside its event loop."""

    def arm(self, fault: Fault) -> None: ...

    def rate_limit_subscribes(self, count: int) -> None: ...

    def refuse_connections(self, count: int | None, seconds: float | None) -> None: ...


class Faults:
    """Arm faults on a running (or not yet started) simulator; see the module docstring."""

    def __init__(self, target: FaultTarget, call: Callable[[Callable[[], None]], None]) -> None:
        self._target = target
        self._call = call

    def drop_after(self, n: int, *, repeat: bool = False) -> None:
        """Abort the TCP connection (no close frame) right after ``n`` more book data frames."""
        self._arm(Fault(DROP, _count(n), repeat=repeat))

    def stall_after(self, n: int, seconds: float | None = None, *, repeat: bool = False) -> None:
        """After ``n`` more book frames send nothing at all (not even heartbeats or pongs) for
        ``seconds`` (None: until the client goes away); then carry on where it stopped."""
        if seconds is not None and seconds < 0:
            raise ValueError(f"stall seconds must not be negative, got {seconds}")
        self._arm(Fault(STALL, _count(n), seconds=seconds, repeat=repeat))

    def bad_checksum_at(self, n: int, *, repeat: bool = False) -> None:
        """The ``n``-th next update (1 = the very next) carries a wrong ``"c"``."""
        if n < 1:
            raise ValueError(f"bad_checksum_at counts updates from 1, got {n}")
        self._arm(Fault(BAD_CHECKSUM, n, repeat=repeat))

    def non_json_after(self, n: int, *, repeat: bool = False) -> None:
        """After ``n`` more book frames send one text frame that is not JSON, then carry on."""
        self._arm(Fault(NON_JSON, _count(n), repeat=repeat))

    def malformed_after(self, n: int, *, repeat: bool = False) -> None:
        """After ``n`` more book frames send one update that is JSON and shaped like a book frame
        but whose price is not a number: a client's book is then in an unknown state."""
        self._arm(Fault(MALFORMED, _count(n), repeat=repeat))

    def maintenance_after(self, n: int, *, repeat: bool = False) -> None:
        """After ``n`` more book frames send systemStatus ``maintenance`` (v2: a ``status`` frame
        with ``"system":"maintenance"``) and close (code 1001)."""
        self._arm(Fault(MAINTENANCE, _count(n), repeat=repeat))

    def rate_limit_next_subscribe(self, count: int = 1) -> None:
        """Answer the next ``count`` subscribe requests (any connection) with
        ``{"errorMessage":"Exceeded msg rate","event":"error"}`` instead of subscribing."""
        target = self._target
        self._call(lambda: target.rate_limit_subscribes(_count(count)))

    def refuse_connections(self, count: int | None = 1, *, seconds: float | None = None) -> None:
        """Reject the next ``count`` connection attempts, or all attempts for ``seconds``, with
        HTTP 503 during the handshake (as Kraken's edge does when it sheds load)."""
        if count is None and seconds is None:
            raise ValueError("refuse_connections needs a count or seconds")
        target = self._target
        self._call(lambda: target.refuse_connections(count, seconds))

    def _arm(self, fault: Fault) -> None:
        target = self._target
        self._call(lambda: target.arm(fault))


def _count(n: int) -> int:
    if n < 0:
        raise ValueError(f"a fault count must not be negative, got {n}")
    return n


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Faults chosen up front (``kbook simulate`` flags), armed before the first connection.

    Counts are None when not asked for. Per-connection faults hit the first connection, or every
    connection with ``repeat``.
    """

    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float | None = None
    bad_checksum_at: int | None = None
    non_json_after: int | None = None
    maintenance_after: int | None = None
    rate_limit_subscribes: int = 0
    refuse_connections: int = 0
    repeat: bool = False

    def apply(self, faults: Faults) -> None:
        repeat = self.repeat
        if self.drop_after is not None:
            faults.drop_after(self.drop_after, repeat=repeat)
        if self.stall_after is not None:
            faults.stall_after(self.stall_after, self.stall_seconds, repeat=repeat)
        if self.bad_checksum_at is not None:
            faults.bad_checksum_at(self.bad_checksum_at, repeat=repeat)
        if self.non_json_after is not None:
            faults.non_json_after(self.non_json_after, repeat=repeat)
        if self.maintenance_after is not None:
            faults.maintenance_after(self.maintenance_after, repeat=repeat)
        if self.rate_limit_subscribes:
            faults.rate_limit_next_subscribe(self.rate_limit_subscribes)
        if self.refuse_connections:
            faults.refuse_connections(self.refuse_connections)
