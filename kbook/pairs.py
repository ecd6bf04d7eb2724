"""Pair names: what users type, what Kraken v1 echoes, and how files are named.

Kraken v1 data frames use its ``wsname`` (``XBT/USD``, ``XDG/USD``); users and Kraken v2 say
``BTC/USD``, ``DOGE/USD``. kbook names files and output partitions by the common name
(``BTC-USD``) and treats the two spellings as one pair everywhere.
"""

from __future__ import annotations

from kbook.errors import UsageError

_V1_ALIASES = {"BTC": "XBT", "DOGE": "XDG"}
_COMMON = {v1: common for common, v1 in _V1_ALIASES.items()}


def parse_pair(text: str) -> str:
    """A user's pair, upper-cased and checked to be ``BASE/QUOTE``; raises ``UsageError``.

    Each side is letters and digits, with dots inside (Kraken lists ``ETH2.S/ETH``)."""
    pair = text.strip().upper().replace("-", "/")
    base, sep, quote = pair.partition("/")
    if not sep or not _is_asset(base) or not _is_asset(quote):
        raise UsageError(f"pair {text!r} is not BASE/QUOTE (for example BTC/USD)")
    return pair


def _is_asset(name: str) -> bool:
    """Letters and digits, dots allowed between them, at most 32 characters."""
    return (
        0 < len(name) <= 32
        and name.isascii()
        and name.replace(".", "").isalnum()
        and not name.startswith(".")
        and not name.endswith(".")
    )


def v1_alias(pair: str) -> str | None:
    """Kraken v1's other spelling of ``pair`` (``BTC/USD`` -> ``XBT/USD``), or None."""
    base, _, quote = pair.partition("/")
    new_base = _V1_ALIASES.get(base, base)
    new_quote = _V1_ALIASES.get(quote, quote)
    alias = f"{new_base}/{new_quote}"
    return alias if alias != pair else None


def common_name(pair: str) -> str:
    """The spelling users know: ``XBT/USD`` -> ``BTC/USD``, ``XDG/USD`` -> ``DOGE/USD``."""
    base, _, quote = pair.partition("/")
    return f"{_COMMON.get(base, base)}/{_COMMON.get(quote, quote)}"


def file_name(pair: str) -> str:
    """A pair as it appears in file and folder names: ``BTC/USD`` -> ``BTC-USD``."""
    return common_name(pair).replace("/", "-")
