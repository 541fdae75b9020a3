"""Credit: while ``consume()`` waits with free slots, it offers the caller side its turns, and a
stream opened then takes one without the round trip to ask for it.

Each side is driven here by hand-made frames on the other end of a real socket pair: the worker
side (``WorkerSide``) by a scripted caller, the caller side (``Hub``) by a scripted worker.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import threading
from collections.abc import Iterator

import pytest

from genbot.streaming import frames
from genbot.streaming.client import Hub, StreamSlot
from genbot.streaming.connection import WorkerConnection
from genbot.streaming.launchers import LaunchedWorker, ManualWorker
from genbot.streaming.worker import Stream, WorkerSide

TIMEOUT = 10.0


class Peer:
    """A scripted end of the connection: sends frames, and reads them (blocking, bounded)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.reader = frames.FrameReader()
        self.received: list[frames.Frame] = []

    def send(self, *sent: frames.Frame) -> None:
        self.sock.sendall(b"".join(frames.frame(kind, sid, data) for kind, sid, data in sent))

    def expect(self, kind: int, sid: int) -> bytes:
        """Read until the frame ``(kind, sid)`` arrives; its payload. The frames before it stay
        in ``received``."""
        while True:
            for index, (k, s, payload) in enumerate(self.received):
                if (k, s) == (kind, sid):
                    del self.received[: index + 1]
                    return payload
            data = self.sock.recv(1 << 16)
            assert data, f"the connection closed before frame {(kind, sid)}"
            self.received += self.reader.feed(data)

    def kinds(self) -> list[int]:
        return [kind for kind, _sid, _payload in self.received]


# -- the worker side, driven by a scripted caller ------------------------------------------------


@pytest.fixture
def worker_side() -> Iterator[tuple[WorkerSide, Peer]]:
    caller, worker = socket.socketpair()
    side = WorkerSide(WorkerConnection(worker), input_timeout=TIMEOUT)
    try:
        yield side, Peer(caller)
    finally:
        caller.close()
        side.close()


def consume_in_thread(side: WorkerSide, maximum: int) -> tuple[threading.Thread, list[Stream]]:
    taken: list[Stream] = []
    thread = threading.Thread(target=lambda: taken.extend(side.consume(1, maximum, TIMEOUT)))
    thread.start()
    return thread, taken


def test_a_waiting_worker_offers_a_turn_taken_without_a_grant(
    worker_side: tuple[WorkerSide, Peer],
) -> None:
    side, caller = worker_side
    thread, taken = consume_in_thread(side, maximum=3)
    assert caller.expect(frames.CREDIT, 1) == b""
    # The caller took the turn: its inputs come unasked, and no GRANT is sent for it.
    caller.send((frames.OPEN_GRANTED, 1, b""), (frames.DATA, 1, pickle.dumps("first", protocol=5)))
    thread.join(TIMEOUT)
    assert [(stream.id, stream.data) for stream in taken] == [(1, "first")]
    taken[0].close()
    caller.expect(frames.END, 1)
    # The offer was taken: nothing to withdraw, and no GRANT was sent.
    assert frames.GRANT not in caller.kinds() and frames.CREDIT not in caller.kinds()


def test_an_offer_not_taken_is_withdrawn(worker_side: tuple[WorkerSide, Peer]) -> None:
    side, caller = worker_side
    thread, taken = consume_in_thread(side, maximum=3)
    caller.expect(frames.CREDIT, 1)
    # A caller that had not seen the offer asks as usual: the worker grants it and, with a
    # stream under way, withdraws the offer.
    caller.send((frames.OPEN, 1, b""))
    caller.expect(frames.GRANT, 1)
    caller.expect(frames.CREDIT, 0)
    caller.send((frames.DATA, 1, pickle.dumps("asked", protocol=5)))
    thread.join(TIMEOUT)
    assert [(stream.id, stream.data) for stream in taken] == [(1, "asked")]
    # consume() returning (here when its timeout passes) withdraws an offer too.
    assert side.consume(1, 1, timeout=0.01) == []
    caller.expect(frames.CREDIT, 1)
    caller.expect(frames.CREDIT, 0)


def test_a_credit_taken_after_it_was_withdrawn_waits_for_the_next_turn(
    worker_side: tuple[WorkerSide, Peer],
) -> None:
    side, caller = worker_side
    # A caller opened on a credit the worker had withdrawn meanwhile (the frames crossed), and a
    # caller without credit asks as usual. The worker, with one slot, takes one at a time, in
    # order; the first has its inputs (sent before the worker granted it), and gets no GRANT.
    caller.send(
        (frames.OPEN_GRANTED, 1, b""),
        (frames.DATA, 1, pickle.dumps("early", protocol=5)),
        (frames.OPEN, 2, b""),
    )
    thread, taken = consume_in_thread(side, maximum=1)
    thread.join(TIMEOUT)
    assert [(stream.id, stream.data) for stream in taken] == [(1, "early")]
    taken[0].close()
    caller.expect(frames.END, 1)
    assert (frames.GRANT, 1) not in [(k, s) for k, s, _ in caller.received]
    thread, taken = consume_in_thread(side, maximum=1)
    caller.expect(frames.GRANT, 2)
    caller.send((frames.DATA, 2, pickle.dumps("asked", protocol=5)))
    thread.join(TIMEOUT)
    assert [(stream.id, stream.data) for stream in taken] == [(2, "asked")]


def test_a_stream_on_a_credit_cancelled_before_its_turn_is_forgotten(
    worker_side: tuple[WorkerSide, Peer],
) -> None:
    side, caller = worker_side
    caller.send(
        (frames.OPEN_GRANTED, 1, b""),
        (frames.CANCEL, 1, b""),
        (frames.DATA, 1, pickle.dumps("late", protocol=5)),  # crossed the cancellation
        (frames.OPEN_DATA, 2, pickle.dumps("next", protocol=5)),
    )
    thread, taken = consume_in_thread(side, maximum=1)
    thread.join(TIMEOUT)
    assert [(stream.id, stream.data) for stream in taken] == [(2, "next")]
    assert not side.pending and not side.pregranted


def test_inputs_of_a_stream_that_did_not_take_a_credit_still_wait_for_its_grant(
    worker_side: tuple[WorkerSide, Peer],
) -> None:
    side, caller = worker_side
    # DATA before GRANT for a stream opened with a plain OPEN is a caller's error: dropped.
    caller.send((frames.OPEN, 1, b""), (frames.DATA, 1, pickle.dumps("too soon", protocol=5)))
    thread, taken = consume_in_thread(side, maximum=1)
    caller.expect(frames.GRANT, 1)
    caller.send((frames.DATA, 1, pickle.dumps("in turn", protocol=5)))
    thread.join(TIMEOUT)
    assert [(stream.id, stream.data) for stream in taken] == [(1, "in turn")]


# -- the caller side, driven by a scripted worker ------------------------------------------------


@pytest.fixture
def hub() -> Iterator[tuple[Hub, Peer]]:
    ends: list[WorkerConnection] = []

    def launch(connection: WorkerConnection) -> LaunchedWorker:
        ends.append(connection)
        return ManualWorker()

    hub = Hub("credit-test", launch, lambda: None)
    try:
        hub.connect()
        yield hub, Peer(ends[0].sock)
    finally:
        hub.close()
        hub.stop()
        for end in ends:
            end.close()


async def test_a_stream_opened_on_a_credit_has_its_turn_at_once(hub: tuple[Hub, Peer]) -> None:
    streams, worker = hub
    worker.send((frames.CREDIT, 1, b""))
    async with StreamSlot(streams) as stream:  # no GRANT comes: the turn was offered
        stream("inputs")
        # Sent together once this round of the loop ends (a burst of opens would join them).
        await asyncio.to_thread(worker.expect, frames.OPEN_GRANTED, stream.id)
        assert pickle.loads(worker.expect(frames.DATA, stream.id)) == "inputs"
        worker.send(
            (frames.OUT, stream.id, pickle.dumps("out", protocol=5)), (frames.END, stream.id, b"")
        )
        assert [out async for out in stream] == ["out"]
    # The one turn offered is taken: the next stream asks, and waits for its GRANT.
    entered = asyncio.Event()

    async def second() -> None:
        async with StreamSlot(streams) as stream:
            entered.set()
            stream("more")

    task = asyncio.create_task(second())
    payload = await asyncio.to_thread(worker.expect, frames.OPEN, stream.id + 1)
    assert not entered.is_set()
    worker.send((frames.GRANT, stream.id + 1, b""))
    await asyncio.wait_for(task, TIMEOUT)
    assert payload == b"" and entered.is_set()


def test_a_synchronous_caller_takes_the_credit_too(hub: tuple[Hub, Peer]) -> None:
    streams, worker = hub
    worker.send((frames.CREDIT, 2, b""))
    with StreamSlot(streams) as stream:
        worker.expect(frames.OPEN_GRANTED, stream.id)
        stream(7)
        assert pickle.loads(worker.expect(frames.DATA, stream.id)) == 7
        worker.send(
            (frames.OUT, stream.id, pickle.dumps(8, protocol=5)), (frames.END, stream.id, b"")
        )
        assert list(stream) == [8]


def test_inputs_sent_with_the_open_on_a_credit_travel_with_it(hub: tuple[Hub, Peer]) -> None:
    streams, worker = hub
    worker.send((frames.CREDIT, 1, b""))
    with StreamSlot(streams, pickle.dumps("early", protocol=5)) as stream:
        worker.expect(frames.OPEN_GRANTED, stream.id)
        assert pickle.loads(worker.expect(frames.DATA, stream.id)) == "early"
        worker.send((frames.END, stream.id, b""))
        assert list(stream) == []


def test_a_withdrawn_credit_is_not_taken(hub: tuple[Hub, Peer]) -> None:
    streams, worker = hub
    worker.send((frames.CREDIT, 4, b""), (frames.CREDIT, 0, b""))
    done = threading.Event()

    def caller() -> None:
        with StreamSlot(streams) as stream:
            stream("x")
        done.set()

    thread = threading.Thread(target=caller)
    thread.start()
    worker.expect(frames.OPEN, 1)  # asks for its turn
    assert not done.is_set()
    worker.send((frames.GRANT, 1, b""))
    worker.expect(frames.DATA, 1)
    thread.join(TIMEOUT)
    assert done.is_set()


async def test_another_thread_sends_what_a_loop_holds_first(hub: tuple[Hub, Peer]) -> None:
    streams, worker = hub
    worker.send((frames.CREDIT, 1, b""))
    slot = StreamSlot(streams)
    first = await slot.__aenter__()  # took the turn: this loop holds its sends for now
    entered = threading.Event()

    def other_thread() -> None:
        with StreamSlot(streams) as stream:
            entered.set()
            stream("other")

    thread = threading.Thread(target=other_thread)
    thread.start()
    # Without this loop going on, both opens reach the worker, in the order they were made.
    worker.expect(frames.OPEN_GRANTED, first.id)
    assert worker.expect(frames.OPEN, first.id + 1) == b""
    assert not entered.is_set()
    worker.send((frames.GRANT, first.id + 1, b""))
    assert pickle.loads(worker.expect(frames.DATA, first.id + 1)) == "other"
    thread.join(TIMEOUT)
    assert entered.is_set()
    await slot.__aexit__(None, None, None)
    worker.expect(frames.CANCEL, first.id)
