"""Framing: frames survive any chunking of the byte stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from genbot.streaming import frames

frame_lists = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=20
)


@given(frame_lists, st.lists(st.integers(1, 400), max_size=50))
def test_any_chunking_gives_back_the_frames(sent: list[frames.Frame], cuts: list[int]) -> None:
    data = b"".join(frames.frame(kind, sid, payload) for kind, sid, payload in sent)
    reader = frames.FrameReader()
    received: list[frames.Frame] = []
    pos = 0
    for cut in cuts:
        received += reader.feed(data[pos : pos + cut])
        pos += cut
    received += reader.feed(data[pos:])
    assert received == sent


def test_a_large_payload_in_small_chunks() -> None:
    payload = bytes(range(256)) * 4096
    data = frames.frame(frames.OUT, 7, payload) + frames.frame(frames.END, 7)
    reader = frames.FrameReader()
    received = []
    for pos in range(0, len(data), 1000):
        received += reader.feed(data[pos : pos + 1000])
    assert received == [(frames.OUT, 7, payload), (frames.END, 7, b"")]
