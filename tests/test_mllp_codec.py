"""The sans-I/O MLLP codec with plain bytes: framing, any chunking, whitespace between blocks,
garbage, close mid-frame, oversize; fuzzed input ends in a message, NEED_DATA or MllpError only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phg.delivery.mllp import MllpClosed, MllpCodec, MllpError, frame

ACK = b"MSH|^~\\&|r||s||20261128090000||ACK^R01^ACK|1|P|2.6\rMSA|AA|X1"


def drain(codec: MllpCodec) -> list[bytes]:
    out = []
    while (message := codec.next_message()) is not None:
        out.append(message)
    return out


def test_frame_is_vt_message_fs_cr():
    assert frame("MSH|x") == b"\x0bMSH|x\x1c\r"


def test_two_blocks_in_one_read_and_crlf_between():
    codec = MllpCodec()
    codec.receive_data(frame(ACK) + b"\r\n" + frame(b"second"))
    assert drain(codec) == [ACK, b"second"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40).filter(lambda b: b"\x0b" not in b and b"\x1c" not in b),
                min_size=1, max_size=4), st.data())
def test_any_chunking_gives_the_same_messages(messages, data):
    stream = b"".join(frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    codec, got, start = MllpCodec(), [], 0
    for cut in [*cuts, len(stream)]:
        if cut > start:  # b"" would mean end of stream
            codec.receive_data(stream[start:cut])
        start = cut
        got += drain(codec)
    assert got == messages
    codec.receive_data(b"")
    with pytest.raises(MllpClosed):
        codec.next_message()


def test_garbage_outside_a_block():
    codec = MllpCodec()
    codec.receive_data(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(MllpError, match="outside an MLLP block"):
        codec.next_message()


def test_close_mid_frame():
    codec = MllpCodec()
    codec.receive_data(frame(ACK)[:20])
    assert codec.next_message() is None and codec.in_frame
    codec.receive_data(b"")
    with pytest.raises(MllpError, match="mid-frame") as info:
        codec.next_message()
    assert not isinstance(info.value, MllpClosed)


def test_oversize_block():
    codec = MllpCodec(max_message=100)
    codec.receive_data(b"\x0b" + b"x" * 200)
    with pytest.raises(MllpError, match="longer than"):
        codec.next_message()


def test_vt_inside_a_block():
    codec = MllpCodec()
    codec.receive_data(b"\x0babc\x0bdef\x1c\r")
    with pytest.raises(MllpError):
        codec.next_message()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([b"\x0b", b"\x1c\r", b"\x1c", b"\r", frame(ACK)])),
                max_size=8), st.booleans())
def test_fuzzed_bytes_never_crash(chunks, close):
    codec = MllpCodec(max_message=64)
    try:
        for chunk in filter(None, chunks):
            codec.receive_data(chunk)
            drain(codec)
        if close:
            codec.receive_data(b"")
            drain(codec)
    except MllpError:
        pass
