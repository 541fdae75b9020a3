"""Scripted models for the profiles tests: each answers ``<model> | <system prompt> | <said>``,
so a reply shows which model and which profile answered it.

With :data:`TOGETHER` armed (``arm()``), a chat whose user line says ``together`` waits until
the other model streams one too (a barrier of two): the two replies can only both finish when
the two models generate at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import genbot
from genbot.models import GenerationSettings
from genbot.streaming import Stream, Streamer

__all__ = ["BROKEN", "MODELS", "SEEN", "TOGETHER", "arm", "running"]

#: The generation settings of every chat (not warm-ups) each model got, by model.
SEEN: dict[str, list[GenerationSettings]] = {}
#: While set, the model ``flaky`` fails every request, its warm-up included.
BROKEN = threading.Event()
#: Two chats meet here (bounded): each model holds its reply until the other streams.
TOGETHER = threading.Barrier(2, timeout=30)


def arm() -> None:
    global TOGETHER
    TOGETHER = threading.Barrier(2, timeout=30)


def _answer(name: str, streams: list[Stream]) -> None:
    for stream in streams:
        if name == "flaky" and BROKEN.is_set():
            raise RuntimeError("the model file is missing")
        messages = stream.data.messages
        if stream.data.settings.max_new_tokens == 1:  # the warm-up
            stream.write("ok")
            stream.close()
            continue
        SEEN.setdefault(name, []).append(stream.data.settings)
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        users = [m["content"] for m in messages if m["role"] == "user"]
        said = users[-1].splitlines()[-1].split(": ", 1)[-1] if users else ""
        stream.write(f"{name} |")  # streaming now
        if said == "together":
            TOGETHER.wait()  # raises BrokenBarrierError after 30 s alone: the reply fails
        stream.write(f" {system} | {said}")
        stream.close()


@genbot.streamer
def default_model(streams: list[Stream]) -> None:
    _answer("default", streams)


@genbot.streamer
def small(streams: list[Stream]) -> None:
    _answer("small", streams)


@genbot.streamer
def big(streams: list[Stream]) -> None:
    _answer("big", streams)


@genbot.streamer
def flaky(streams: list[Stream]) -> None:
    _answer("flaky", streams)


#: The scripted model of each ``model`` value of a ``[models.NAME]`` table.
MODELS: dict[str, Streamer] = {
    "default": default_model,
    "small": small,
    "big": big,
    "flaky": flaky,
}


def running() -> Iterator[dict[str, Streamer]]:
    """For a pytest fixture: the three models on threads; closed afterwards."""
    arm()
    SEEN.clear()
    BROKEN.clear()
    for model in (default_model, small, big, flaky):
        model.start_thread(maximum=2)
    try:
        yield MODELS
    finally:
        TOGETHER.abort()
        for each in MODELS.values():
            each.close()
