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

from kbook.errors import UsageError


class Api(StrEnum):
    """Which Kraken WebSocket API a connection, a segment or a book speaks."""

    V1 = "v1"
    V2 = "v2"


URLS = {Api.V1: "wss://ws.kraken.com", Api.V2: "wss://ws.kraken.com/v2"}
"""Kraken's public addresses, per API."""

DEPTHS = (10, 25, 100, 500, 1000)
"""The depths Kraken accepts for the book channel, under v1 and v2 alike."""


def parse_api(text: str, option: str = "--api") -> Api:
    """The ``Api`` named by ``text``, or a ``UsageError`` naming ``option`` and the choices."""
    try:
        return Api(text)
    except ValueError:
        choices = ", ".join(Api)
        raise UsageError(f"{option} {text!r} is not one of {choices}") from None


def parse_depth(depth: int, option: str = "--depth") -> int:
    """``depth`` if Kraken offers it, else a ``UsageError`` naming ``option`` and the depths."""
    if depth not in DEPTHS:
        offered = ", ".join(map(str, DEPTHS))
        raise UsageError(f"{option} {depth} is not one Kraken offers; use one of {offered}")
    return depth
