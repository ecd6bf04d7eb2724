"""Which pairs are subscribed, under which name, and what to send next: a state machine, no I/O.

Kraken quirks it handles (``shared/kraken/README.md`` sections 1, 4 and 5):

- v1 may echo ``BTC/USD`` as ``BTC/USD`` or ``XBT/USD``, or refuse it; a refused pair is retried
  once under its other v1 spelling (``kbook.pairs.v1_alias``) and the retry is logged as an
  ``alias`` meta line. Every spelling routes to the stream of the pair the user asked for. v2
  knows only ``BTC/USD`` (``kbook.pairs.common_name``): no retry.
- After a checksum mismatch the pair is unsubscribed, then subscribed again once the unsubscribe is
  answered, to get a fresh snapshot (a bare re-subscribe is refused as ``Already subscribed``).
  This happens once per desync and never more often than ``resubscribe_interval_ns`` per pair:
  resubscribe storms trip ``Exceeded msg rate``.
- ``Exceeded msg rate`` (v1: an ``error`` event; v2: a failed answer) refused the requests in
  flight: they are sent again after ``rate_limit_delay_ns``. A request that gets no answer at all
  is sent again after ``subscribe_timeout_ns``.

- Every channel recorded (``RecordConfig.channels``: the book, the trades) is subscribed for every
  pair, one request per channel, and kept on its own (one ``PairSubscription`` per pair and
  channel): answers say their channel (a v2 refusal, which does not, is matched by ``req_id``), a
  resync concerns the book alone, an alias found for one channel is tried by the other on its own.

Each method returns ``Action`` values that the recorder carries out: requests to send, meta lines
to write, warnings to print. Times are ``time.monotonic_ns()`` values. Requests are built and
answers read by the run's ``kbook.dialect.Dialect``, so the machine is the same for both APIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from kbook.api import DEFAULT_CHANNELS, Channel
from kbook.dialect import (
    OTHER,
    REFUSED,
    REJECTED,
    SUBSCRIBED,
    UNSUBSCRIBED,
    Answer,
    Dialect,
    spellings,
)
from kbook.units import SECOND

if TYPE_CHECKING:
    from kbook.live.config import LiveConfig

__all__ = ["Action", "PairSubscription", "State", "Subscriptions", "spellings"]

_REQUESTS_KEPT = 256
"""Requests whose channel is remembered; an answer comes within ``subscribe_timeout_ns``."""


class State(Enum):
    PENDING = "pending"
    """Not requested on this connection yet (or waiting out a rate limit)."""
    SENT = "sent"
    """Subscribe sent, no answer yet."""
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBING = "unsubscribing"
    """Resync: unsubscribe sent; subscribe follows its answer."""
    FAILED = "failed"
    """Refused under every name: given up for this run."""


@dataclass
class Action:
    """Something to do: send a request, write a meta line, print a warning or a note."""

    send: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    targets: tuple[str, ...] | None = None
    """The user pairs whose streams get ``meta``; None for every stream."""
    warning: str | None = None
    """Printed even when quiet: something the user must fix."""
    note: str | None = None
    """Printed unless quiet: something worth knowing."""
    resync: bool = False
    """``send`` is the unsubscribe that starts a resync."""


@dataclass
class PairSubscription:
    """One pair the user asked for, and where its subscription stands."""

    pair: str
    names: tuple[str, ...]
    """Spellings to try, in order: as asked, then Kraken's other v1 name (v2: one name)."""
    channel: Channel = Channel.BOOK
    name_index: int = 0
    state: State = State.PENDING
    wire: str | None = None
    """The name Kraken's frames carry, from its ``subscribed`` answer."""
    sent_ns: int = 0
    retry_at_ns: int = 0
    resync_at_ns: int | None = None
    last_resync_ns: int | None = None
    error: str | None = None
    subscribed_once: bool = False

    @property
    def name(self) -> str:
        """The spelling currently used in requests."""
        return self.names[self.name_index]


@dataclass
class Subscriptions:
    """The subscriptions of one recorder run, across connections."""

    pairs: tuple[str, ...]
    depth: int
    subscribe_timeout_ns: int = 10 * SECOND
    resubscribe_interval_ns: int = 5 * SECOND
    rate_limit_delay_ns: int = 5 * SECOND
    dialect: Dialect = field(default_factory=Dialect)
    """The API spoken (v1 by default)."""
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    subs: dict[str, PairSubscription] = field(init=False)
    """Per pair, the subscription of its first channel (the book's when recorded): the one a
    pair's stream and metrics follow."""
    by_channel: dict[tuple[str, Channel], PairSubscription] = field(init=False)
    """Every subscription, per (pair, channel)."""
    route: dict[str, str] = field(init=False)
    """Any spelling Kraken may use -> the user's pair."""
    _reqid: int = field(init=False, default=0)
    _request_channels: dict[int, Channel] = field(init=False, default_factory=dict)
    """The channel of each request sent, for answers that do not say theirs."""

    @classmethod
    def for_config(cls, config: LiveConfig, dialect: Dialect) -> Subscriptions:
        """The subscriptions a recording (or a watch) asks for, with its configured pacing."""
        return cls(
            config.pairs,
            config.depth,
            subscribe_timeout_ns=config.subscribe_timeout_ns,
            resubscribe_interval_ns=config.resubscribe_interval_ns,
            rate_limit_delay_ns=config.rate_limit_delay_ns,
            dialect=dialect,
            channels=config.channels,
        )

    def __post_init__(self) -> None:
        self.by_channel = {
            (pair, channel): PairSubscription(pair, self.dialect.spellings(pair), channel)
            for pair in self.pairs
            for channel in self.channels
        }
        self.subs = {pair: self.by_channel[(pair, self.channels[0])] for pair in self.pairs}
        self.route = {name: sub.pair for sub in self.subs.values() for name in sub.names}

    @property
    def _all(self) -> list[PairSubscription]:
        return list(self.by_channel.values())

    # -- queries --------------------------------------------------------------------------------

    def pair_for(self, name: Any) -> str | None:
        """The user's pair that a frame's pair name belongs to, or None."""
        return self.route.get(name) if isinstance(name, str) else None

    @property
    def all_failed(self) -> bool:
        return all(sub.state is State.FAILED for sub in self._all)

    @property
    def failed(self) -> dict[str, str]:
        """Pairs given up on, with Kraken's reason."""
        return {p: s.error or "refused" for p, s in self.subs.items() if s.state is State.FAILED}

    @property
    def subscribed_once(self) -> tuple[str, ...]:
        return tuple(
            pair
            for pair in self.subs
            if any(self.by_channel[(pair, c)].subscribed_once for c in self.channels)
        )

    # -- connection life ------------------------------------------------------------------------

    def on_connect(self, now_ns: int) -> list[Action]:
        """A new connection: subscribe every pair not given up, one request per channel."""
        live = [sub for sub in self._all if sub.state is not State.FAILED]
        for sub in live:
            sub.state = State.PENDING
            sub.retry_at_ns = now_ns
            sub.resync_at_ns = None
        return self._subscribe(live, now_ns)

    def on_disconnect(self) -> None:
        for sub in self._all:
            if sub.state is not State.FAILED:
                sub.state = State.PENDING
                sub.resync_at_ns = None

    # -- Kraken's answers -----------------------------------------------------------------------

    def on_control(self, msg: dict[str, Any], now_ns: int) -> list[Action]:
        """Apply a control frame (an (un)subscribe answer, a refused request); others change
        nothing."""
        answer = self.dialect.answer(msg)
        if answer is None or answer.kind == OTHER:
            return []
        if answer.kind == REJECTED:
            return self._on_error(now_ns)
        return self._on_answer(answer, now_ns)

    def on_checksum_failed(self, pair_name: Any, now_ns: int) -> None:
        """Schedule a resync of the pair of ``pair_name``, paced."""
        pair = self.pair_for(pair_name)
        book = self.by_channel.get((pair, Channel.BOOK)) if pair is not None else None
        if book is not None:
            self._schedule_resync(book, now_ns)

    def tick(self, now_ns: int) -> list[Action]:
        """Requests that are due: resyncs, retries after a rate limit or a lost answer."""
        actions: list[Action] = []
        for sub in self._all:
            if sub.state is State.SUBSCRIBED and sub.resync_at_ns is not None:
                if now_ns >= sub.resync_at_ns:
                    actions += self._unsubscribe(sub, now_ns)
            elif (
                sub.state is State.UNSUBSCRIBING
                and now_ns - sub.sent_ns >= self.subscribe_timeout_ns
            ):
                actions += self._subscribe([sub], now_ns)
        due = [
            sub
            for sub in self._all
            if (sub.state is State.PENDING and now_ns >= sub.retry_at_ns)
            or (sub.state is State.SENT and now_ns - sub.sent_ns >= self.subscribe_timeout_ns)
        ]
        if due:
            actions += self._subscribe(due, now_ns)
        return actions

    # -- internals ------------------------------------------------------------------------------

    def _on_answer(self, answer: Answer, now_ns: int) -> list[Action]:
        pair = self.pair_for(answer.name)
        channel = answer.channel or self._request_channels.get(answer.reqid, self.channels[0])
        sub = self.by_channel.get((pair, channel)) if pair is not None else None
        if sub is None:
            return []
        kind = answer.kind
        if kind == SUBSCRIBED:
            sub.state = State.SUBSCRIBED
            sub.wire = answer.name
            sub.subscribed_once = True
            sub.error = None
            return []
        if kind == UNSUBSCRIBED:
            return self._subscribe([sub], now_ns) if sub.state is State.UNSUBSCRIBING else []
        if kind == REFUSED:
            return self._on_refused(sub, answer.reason or "refused", now_ns)
        return []

    def _on_refused(self, sub: PairSubscription, reason: str, now_ns: int) -> list[Action]:
        if sub.state is State.UNSUBSCRIBING:
            # "Subscription Not Found": nothing to unsubscribe, so subscribe at once.
            return self._subscribe([sub], now_ns)
        if "already subscribed" in reason.lower():
            # Kraken still streams this pair but sends no new snapshot: force one (a book's;
            # trades need none).
            sub.state = State.SUBSCRIBED
            if sub.channel is Channel.BOOK:
                self._schedule_resync(sub, now_ns)
            return []
        if sub.state is not State.SENT:
            return []
        if sub.name_index + 1 < len(sub.names):
            tried = sub.name
            sub.name_index += 1
            alias = {"type": "alias", "pair": sub.pair, "tried": tried, "alias": sub.name}
            alias["reason"] = reason
            alias["channel"] = str(sub.channel)
            note = f"{sub.pair}: Kraken refused {tried} ({reason}); retrying as {sub.name}"
            return [Action(meta=alias, targets=(sub.pair,), note=note)] + self._subscribe(
                [sub], now_ns
            )
        sub.state = State.FAILED
        sub.error = reason
        meta = {"type": "subscribe_error", "pair": sub.pair, "tried": list(sub.names)}
        meta["reason"] = reason
        meta["channel"] = str(sub.channel)
        what = sub.pair if sub.channel is self.channels[0] else f"{sub.pair} {sub.channel}"
        warning = f"{what}: cannot subscribe: {reason}"
        return [Action(meta=meta, targets=None, warning=warning)]

    def _on_error(self, now_ns: int) -> list[Action]:
        """``Exceeded msg rate`` and the like: whatever was in flight was not done."""
        retry_at = now_ns + self.rate_limit_delay_ns
        for sub in self._all:
            if sub.state is State.SENT:
                sub.state = State.PENDING
                sub.retry_at_ns = retry_at
            elif sub.state is State.UNSUBSCRIBING:
                sub.state = State.SUBSCRIBED
                sub.resync_at_ns = retry_at
        return []

    def _schedule_resync(self, sub: PairSubscription, now_ns: int) -> None:
        if sub.state is not State.SUBSCRIBED or sub.resync_at_ns is not None:
            return  # one resync per desync: one is already under way or planned
        earliest = (sub.last_resync_ns or 0) + self.resubscribe_interval_ns
        sub.resync_at_ns = now_ns if sub.last_resync_ns is None else max(now_ns, earliest)

    def _next_reqid(self) -> int:
        self._reqid += 1
        return self._reqid

    def _next_request(self, channel: Channel) -> int:
        reqid = self._next_reqid()
        self._request_channels[reqid] = channel
        if len(self._request_channels) > _REQUESTS_KEPT:  # bounded over a run of months
            del self._request_channels[next(iter(self._request_channels))]
        return reqid

    def _subscribe(self, subs: list[PairSubscription], now_ns: int) -> list[Action]:
        """One request per channel (Kraken's requests name one), pairs in the given order."""
        actions = []
        for channel in self.channels:
            batch = [sub for sub in subs if sub.channel is channel]
            if not batch:
                continue
            names = [sub.name for sub in batch]
            request = self.dialect.subscribe(
                names, self.depth, self._next_request(channel), channel
            )
            for sub in batch:
                sub.state = State.SENT
                sub.sent_ns = now_ns
                sub.resync_at_ns = None
            meta = {"type": "subscribe", "request": request}
            targets = tuple(sub.pair for sub in batch)
            actions.append(Action(send=request, meta=meta, targets=targets))
        return actions

    def _unsubscribe(self, sub: PairSubscription, now_ns: int) -> list[Action]:
        request = self.dialect.unsubscribe(
            [sub.name], self.depth, self._next_request(sub.channel), sub.channel
        )
        sub.state = State.UNSUBSCRIBING
        sub.sent_ns = now_ns
        sub.last_resync_ns = now_ns
        sub.resync_at_ns = None
        meta = {"type": "resubscribe", "pair": sub.pair, "name": sub.name, "request": request}
        return [Action(send=request, meta=meta, targets=(sub.pair,), resync=True)]
