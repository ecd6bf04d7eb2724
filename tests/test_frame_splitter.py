"""``kbook.live.connection.FrameSplitter``: plain frames cut from a server's bytes however the
bytes are split, and the bytes from the first frame that is not plain handed on whole."""

from __future__ import annotations

import pytest
from hostile_support import BINARY, CONTINUATION, PING, TEXT, header

from kbook.live.connection import FrameSplitter

TEXTS = ["a", "é" * 70, "x" * 200, "y" * 70_000, '{"event":"heartbeat"}']


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return header(opcode, len(payload), fin) + payload


def plain(texts: list[str]) -> bytes:
    return b"".join(frame(TEXT, text.encode()) for text in texts)


def split_all(splitter: FrameSplitter, data: bytes, size: int) -> tuple[list[str], bytes | None]:
    texts: list[str] = []
    for start in range(0, len(data), size):
        more, _, rest = splitter.split(data[start : start + size])
        texts += more
        if rest is not None:
            return texts, rest + data[start + size :]
    return texts, None


@pytest.mark.parametrize("size", [1, 2, 3, 7, 126, 4096, 1 << 20])
def test_plain_frames_come_out_whole_however_the_bytes_are_split(size: int) -> None:
    texts, rest = split_all(FrameSplitter(1 << 20), plain(TEXTS), size)
    assert texts == TEXTS
    assert rest is None


def test_a_binary_frame_is_taken_and_a_bad_utf8_byte_costs_one_character() -> None:
    texts, _, rest = FrameSplitter(1024).split(frame(BINARY, b"ok") + frame(TEXT, b"a\xffb"))
    assert texts == ["ok", "a\ufffdb"]
    assert rest is None


@pytest.mark.parametrize(
    "odd",
    [
        frame(PING, b"ping"),
        frame(TEXT, b"first half", fin=False) + frame(CONTINUATION, b"second half"),
        bytes([0x81 | 0x40, 2]) + b"hi",  # an extension bit nobody negotiated
        bytes([0x81, 0x80 | 2]) + b"\x00\x00\x00\x00hi",  # masked, as a server must not
        frame(TEXT, b"z" * 2000),  # over the limit
    ],
)
def test_the_first_frame_that_is_not_plain_and_all_after_it_are_handed_on(odd: bytes) -> None:
    before, after = plain(TEXTS[:2]), plain(TEXTS[2:3])
    for size in (1, 5, 1 << 20):
        texts, rest = split_all(FrameSplitter(1024), before + odd + after, size)
        assert texts == TEXTS[:2]
        assert rest == odd + after
