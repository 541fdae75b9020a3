"""Framing: the messages the caller side and a worker exchange over one byte stream.

Every frame is a header ``(payload length, kind, stream id)`` followed by the payload, so one
connection carries all streams of a worker, multiplexed by stream id. Payloads of inputs and
outputs are pickles, made on the side that sends them so that an unpicklable object fails there.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from genbot.streaming.errors import StreamError

__all__ = [
    "CANCEL",
    "CREDIT",
    "DATA",
    "END",
    "ERROR",
    "EXPIRE",
    "FATAL",
    "GRANT",
    "HEADER",
    "OPEN",
    "OPEN_DATA",
    "OPEN_GRANTED",
    "OUT",
    "OUTS",
    "PLAIN_TYPES",
    "FrameReader",
    "dumps",
    "frame",
    "loads",
]

HEADER = struct.Struct("<IBI")

# caller -> worker
OPEN = 1  # a caller waits for a turn
DATA = 2  # the caller's inputs (payload: pickle)
CANCEL = 3  # the caller went away
OPEN_DATA = 10  # OPEN with the inputs already (payload: pickle): ready as soon as granted
OPEN_GRANTED = 12  # OPEN that took its turn from the worker's CREDIT: its DATA follows unasked
# worker -> caller
GRANT = 4  # the worker took the stream: the caller may now build and send its inputs
OUT = 5  # one output (payload: pickle)
END = 6  # the worker closed the stream
ERROR = 7  # the stream failed (payload: pickle of (message, traceback text or None))
EXPIRE = 8  # the inputs did not arrive in time after GRANT; the slot was released
OUTS = 9  # outputs of plain types (str, bytes, numbers, None), many streams' in one pickle:
#           a list of (stream id, output); the stream id in the header is 0
FATAL = 11  # the worker stops for good: why (payload: pickle of a str); the stream id is 0
CREDIT = 13  # the worker waits in consume() and would grant this many turns at once (the count
#             is in the header's stream id field; 0 withdraws the credit: the worker got busy)

#: Output types that always pickle: the worker batches them into OUTS frames.
PLAIN_TYPES = frozenset({str, bytes, int, float, bool, type(None)})

Frame = tuple[int, int, bytes]


def frame(kind: int, sid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), kind, sid) + payload


def dumps(obj: object, what: str) -> bytes:
    """Pickle ``obj`` (an input or an output), failing with a clear :class:`StreamError`."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise StreamError(
            f"cannot send {what} of type {type(obj).__qualname__}: it is not picklable ({exc}); "
            "streams carry picklable objects only"
        ) from exc


def loads(payload: bytes, what: str) -> Any:
    try:
        return pickle.loads(payload)
    except Exception as exc:
        raise StreamError(f"cannot unpickle {what}: {exc!r}") from exc


class FrameReader:
    """Splits a byte stream, arriving in arbitrary chunks, into frames.

    An incomplete frame's chunks are kept in a list and joined once it is complete, so a large
    payload arriving in many chunks is copied once, not once per chunk.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0  # bytes needed to complete the frame in _parts

    def feed(self, data: bytes) -> list[Frame]:
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts.clear()
        frames: list[Frame] = []
        unpack = HEADER.unpack_from
        size = HEADER.size
        end_of_data = len(data)
        pos = 0
        while end_of_data - pos >= size:
            length, kind, sid = unpack(data, pos)
            end = pos + size + length
            if end > end_of_data:
                self._need = end - pos
                break
            frames.append((kind, sid, data[pos + size : end]))
            pos = end
        else:
            self._need = size
        if pos < end_of_data:
            rest = data[pos:]
            self._parts.append(rest)
            self._have = len(rest)
        return frames
