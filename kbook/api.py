"""Kraken's two WebSocket APIs, named once.

Kraken serves the order book over WebSocket v1 (arrays, numbers as strings; maintained, frozen) and
v2 (objects, numbers as number lexemes; recommended for new integrations). Everything that says
which API a thing belongs to uses ``Api``; what differs between them in wire shape lives in the
per-API dialects (``kbook.dialect`` for what kbook says and reads live, ``kbook.v2`` for v2's exact
number decoding). ``Api`` is a ``StrEnum``, so its members are the very strings written in segment
meta lines (``"api": "v2"``) and accepted by ``--api``.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

from kbook.errors import UsageError


class Api(StrEnum):
    """Which Kraken WebSocket API a connection, a segment or a book speaks."""

    V1 = "v1"
    V2 = "v2"


DEFAULT = Api.V2
"""The API of a new connection: Kraken recommends v2 for new integrations, v1 is frozen."""

URLS = {Api.V1: "wss://ws.kraken.com", Api.V2: "wss://ws.kraken.com/v2"}
"""Kraken's public addresses, per API."""

URL_PATHS = {Api.V1: "", Api.V2: "/v2"}
"""The path that makes an address say its API (``api_of_url``), as Kraken's addresses do."""

DEPTHS = (10, 25, 100, 500, 1000)
"""The depths Kraken accepts for the book channel, under v1 and v2 alike."""


class Channel(StrEnum):
    """A Kraken channel kbook records: the order book, and the trades beside it. Both APIs name
    them alike, so members are the strings of ``--channels``, of requests and of meta lines."""

    BOOK = "book"
    TRADE = "trade"


DEFAULT_CHANNELS = (Channel.BOOK,)
"""What ``kbook record`` subscribes when ``--channels`` is not given."""


def parse_api(text: str, option: str = "--api") -> Api:
    """The ``Api`` named by ``text``, or a ``UsageError`` naming ``option`` and the choices."""
    try:
        return Api(text)
    except ValueError:
        choices = ", ".join(Api)
        raise UsageError(f"{option} {text!r} is not one of {choices}") from None


def api_of_url(url: str) -> Api:
    """The API an address says: a path ending in ``/v2`` is v2, anything else v1.

    That is how Kraken spells its two addresses (``URLS``), and how ``kbook simulate`` prints its
    own; a trailing ``/`` is ignored.
    """
    path = urlsplit(url).path.rstrip("/")
    return Api.V2 if path.endswith(URL_PATHS[Api.V2]) else Api.V1


def choose_api(api: str | None, url: str | None) -> tuple[Api, str]:
    """``(api, url)`` of a connection from ``--api`` and ``--url``, either of which may be None.

    ``--api`` given always wins; without it the API follows ``--url`` (``api_of_url``); with
    neither, ``DEFAULT``. The address defaults to Kraken's of the chosen API.
    """
    if api is not None:
        chosen = parse_api(api)
    elif url is not None:
        chosen = api_of_url(url)
    else:
        chosen = DEFAULT
    return chosen, url if url is not None else URLS[chosen]


def parse_depth(depth: int, option: str = "--depth") -> int:
    """``depth`` if Kraken offers it, else a ``UsageError`` naming ``option`` and the depths."""
    if depth not in DEPTHS:
        offered = ", ".join(map(str, DEPTHS))
        raise UsageError(f"{option} {depth} is not one Kraken offers; use one of {offered}")
    return depth


def parse_channels(
    text: str | tuple[str, ...] | list[str], option: str = "--channels"
) -> tuple[Channel, ...]:
    """The channels named by ``text`` (``"book,trade"``, or a sequence), de-duplicated, in
    ``Channel`` order; a ``UsageError`` naming ``option`` and the choices for anything else."""
    names = text.split(",") if isinstance(text, str) else list(text)
    found: set[Channel] = set()
    for name in names:
        try:
            found.add(Channel(name.strip().lower()))
        except ValueError:
            choices = ", ".join(Channel)
            raise UsageError(
                f"{option} {name.strip()!r} is not a channel kbook records; use {choices}"
            ) from None
    if not found:
        raise UsageError(f"{option} names no channel; use book, trade or book,trade")
    return tuple(channel for channel in Channel if channel in found)
