"""``genbot serve`` as clients use it: real ``genbot serve`` processes called with the official
``openai`` client and with genbot's own OpenAI backend. The served backend is the scripted one
of ``tests/serve_workers.py`` (fast and controllable, given as ``serve_workers:Scripted``),
except in one end-to-end test on the embedded SmolLM2."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from genbot.models import ChatRequest, GenerationSettings
from genbot.models.openai import OpenAIStreamer
from genbot.serve import (
    ChatServer,
    Completion,
    RequestError,
    ServeError,
    load_streamer,
    model_id,
    parse_chat,
)
from serve_harness import Journal, Upstream, environment

SCRIPTED = "serve_workers:Scripted"
USER = "user"


def ask(text: str) -> list[Any]:
    return [{"role": USER, "content": text}]


@pytest.fixture(scope="module")
def journal() -> Journal:
    return Journal()


@pytest.fixture(scope="module")
def upstream(journal: Journal) -> Iterator[Upstream]:
    """One scripted upstream shared by the tests that do not change its state."""
    up = Upstream("shared", [SCRIPTED, "-s", "parallel=4"], journal)
    try:
        yield up.wait_ready()
    finally:
        up.stop()


def client(up: Upstream, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=up.url, api_key=kwargs.pop("api_key", "none"), **kwargs)


# -- the official openai client ---------------------------------------------------------------


async def test_models_and_health(upstream: Upstream) -> None:
    async with client(upstream) as api:
        listed = [m.id async for m in api.models.list()]
    assert listed == [SCRIPTED]
    async with aiohttp.ClientSession() as http:
        async with http.get(upstream.url.removesuffix("/v1") + "/health") as response:
            assert response.status == 200
            health = await response.json()
    assert health["status"] == "ok"
    assert (health["model"], health["parallel"], health["queue"]) == (SCRIPTED, 4, 8)


async def test_openai_client_not_streaming(upstream: Upstream) -> None:
    async with client(upstream) as api:
        done = await api.chat.completions.create(model=SCRIPTED, messages=ask("count 5"))
        cut = await api.chat.completions.create(
            model=SCRIPTED, messages=ask("count 5"), max_tokens=3
        )
        newer = await api.chat.completions.create(
            model=SCRIPTED, messages=ask("count 5"), max_completion_tokens=2
        )
    assert done.choices[0].message.content == "1 2 3 4 5"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "stop"
    assert done.model == SCRIPTED and done.id.startswith("chatcmpl-")
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("1 2 3", "length")
    assert newer.choices[0].message.content == "1 2"


async def test_openai_client_streaming(upstream: Upstream) -> None:
    async with client(upstream) as api:
        stream = await api.chat.completions.create(
            model=SCRIPTED,
            messages=[{"role": "system", "content": "Be brief."}, *ask("count 4")],
            stream=True,
            temperature=0,
            top_p=0.5,
            seed=7,
            stop=["never"],
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "1 2 3 4"
    assert [c.choices[0].finish_reason for c in chunks[-2:]] == [None, "stop"]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].object == "chat.completion.chunk"


async def test_genbot_openai_backend(upstream: Upstream) -> None:
    """genbot's own OpenAI backend, as a bot uses it against a fleet."""
    backend = OpenAIStreamer(base_url=upstream.url, max_concurrency=2)
    backend.start_thread()
    try:
        request = ChatRequest(ask("count 6"), GenerationSettings(max_new_tokens=50))
        replies = await asyncio.gather(*(_chat(backend, request) for _ in range(3)))
        echo = await _chat(
            backend, ChatRequest([{"role": "user", "name": "alice", "content": "hi"}])
        )
    finally:
        backend.close()
    assert replies == ["1 2 3 4 5 6"] * 3
    assert echo == "You said: alice: hi"  # the name is kept, as genbot's backends do


async def _chat(backend: OpenAIStreamer, request: ChatRequest) -> str:
    return "".join([delta async for delta in backend.chat(request)])


# -- bad requests -----------------------------------------------------------------------------

GOOD = {"model": SCRIPTED, "messages": ask("count 2")}
BAD: list[tuple[Any, str | None]] = [
    ({"model": SCRIPTED}, "messages"),
    ({**GOOD, "messages": []}, "messages"),
    ({**GOOD, "messages": "hi"}, "messages"),
    ({**GOOD, "messages": [{"role": "system", "content": "x"}]}, "messages"),
    ({**GOOD, "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}]}, "messages[0]"),
    ({**GOOD, "messages": [{"role": {}, "content": "x"}]}, "messages[0]"),
    ({**GOOD, "messages": [{"role": ["user"], "content": "x"}]}, "messages[0]"),
    (
        {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "x": 1}]}]},
        "messages[0]",
    ),
    ({**GOOD, "temperature": 2.5}, "temperature"),
    ({**GOOD, "temperature": "hot"}, "temperature"),
    ({**GOOD, "temperature": 10**400}, "temperature"),
    ({**GOOD, "top_p": 0}, "top_p"),
    ({**GOOD, "max_tokens": 0}, "max_tokens"),
    ({**GOOD, "max_tokens": "5"}, "max_tokens"),
    ({**GOOD, "max_tokens": 10**20}, "max_tokens"),
    ({**GOOD, "max_tokens": 2**63 - 1}, "max_tokens"),
    ({**GOOD, "max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({**GOOD, "stop": [""]}, "stop"),
    ({**GOOD, "stop": 3}, "stop"),
    ({**GOOD, "seed": -1}, "seed"),
    ({**GOOD, "n": 2}, "n"),
    ({**GOOD, "stream": "yes"}, "stream"),
    ([GOOD], None),
]


@pytest.mark.parametrize(("body", "param"), BAD)
async def test_bad_request_is_400_with_openai_error(
    upstream: Upstream, body: Any, param: str | None
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{upstream.url}/chat/completions", json=body) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_bad_json_is_400_and_unknown_route_404(upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{upstream.url}/chat/completions", data=b"{bad") as response:
            assert response.status == 400
            assert "not valid JSON" in (await response.json())["error"]["message"]
        headers = {"Content-Type": "application/json; charset=nosuch"}
        async with http.post(
            f"{upstream.url}/chat/completions", data=b"{}", headers=headers
        ) as response:
            assert response.status == 400
        async with http.get(f"{upstream.url}/nothing") as response:
            assert response.status == 404
            assert "error" in await response.json()


async def test_unknown_fields_are_ignored(upstream: Upstream) -> None:
    async with client(upstream) as api:
        done = await api.chat.completions.create(
            model="any-name",
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "count 3"}]},
            ],
            frequency_penalty=0.5,
            logit_bias={"1": 2},
            user="someone",
            n=1,
            extra_body={"repetition_penalty": 1.2, "top_k": 40, "stream_options": None},
        )
    assert done.choices[0].message.content == "1 2 3"


# -- failures ---------------------------------------------------------------------------------


async def test_backend_failure_before_text_is_500(upstream: Upstream) -> None:
    async with client(upstream, max_retries=0) as api:
        with pytest.raises(openai.InternalServerError, match="on strike"):
            await api.chat.completions.create(model=SCRIPTED, messages=ask("failnow"))
        with pytest.raises(openai.InternalServerError, match="on strike"):
            await api.chat.completions.create(model=SCRIPTED, messages=ask("failnow"), stream=True)


async def test_backend_failure_mid_stream_ends_with_an_error_event(upstream: Upstream) -> None:
    got: list[str] = []
    async with client(upstream, max_retries=0) as api:
        stream = await api.chat.completions.create(
            model=SCRIPTED, messages=ask("fail"), stream=True
        )
        with pytest.raises(openai.APIError, match="caught fire"):
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "partial"


async def test_api_key(journal: Journal) -> None:
    up = Upstream("keyed", [SCRIPTED], journal, {"GENBOT_API_KEY": "s3cret"})
    try:
        up.wait_ready()
        for key in ("none", "s3cret-not"):
            async with client(up, api_key=key, max_retries=0) as api:
                with pytest.raises(openai.AuthenticationError, match="API key"):
                    await api.chat.completions.create(model=SCRIPTED, messages=ask("count 1"))
        async with client(up, api_key="s3cret") as api:
            done = await api.chat.completions.create(model=SCRIPTED, messages=ask("count 2"))
        assert done.choices[0].message.content == "1 2"
        async with aiohttp.ClientSession() as http:
            async with http.get(up.url.removesuffix("/v1") + "/health") as response:
                assert response.status == 200  # load balancers check without the key
    finally:
        up.stop()


async def test_full_server_answers_429_and_a_client_that_leaves_frees_its_slot(
    journal: Journal,
) -> None:
    up = Upstream("small", [SCRIPTED, "-s", "parallel=1", "--queue", "1"], journal)
    try:
        up.wait_ready()
        async with client(up, max_retries=0) as api:
            held = []
            for _ in range(2):  # the one slot and the one place in the queue
                stream = await api.chat.completions.create(
                    model=SCRIPTED, messages=ask("forever"), stream=True, max_tokens=100_000
                )
                await stream.__anext__()
                held.append(stream)
            with pytest.raises(openai.RateLimitError) as refused:
                await api.chat.completions.create(model=SCRIPTED, messages=ask("count 1"))
            assert refused.value.response.headers["Retry-After"] == "1"
            assert refused.value.status_code == 429
            assert "busy" in refused.value.message

            for left in (1, 2):  # a client goes away: its generation stops, its slot is free
                await held.pop().close()
                await journal.wait(
                    lambda n=left: len(journal.find("cancelled", "forever", "small")) == n,
                    30,
                    "the worker saw the client leave",
                )
                done = await api.chat.completions.create(model=SCRIPTED, messages=ask("count 2"))
                assert done.choices[0].message.content == "1 2"
    finally:
        up.stop()


async def test_a_client_that_resets_its_connection_stops_the_generation_quietly(
    upstream: Upstream, journal: Journal
) -> None:
    """Whether the server sees the reset as a cancelled handler or as a failed write, the
    worker stops and no error is logged."""
    host, port = "127.0.0.1", upstream.port
    body = b'{"messages": [{"role": "user", "content": "forever reset"}], "stream": true}'
    for _ in range(3):
        reader, writer = await asyncio.open_connection(host, port)
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await asyncio.wait_for(reader.readuntil(b"tick "), 30)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not a FIN
    await journal.wait(
        lambda: len(journal.find("cancelled", "forever reset", "shared")) == 3, 30, "3 cancels"
    )
    logged = journal.output("shared")
    assert "Error handling request" not in logged and "Traceback" not in logged


async def test_sigterm_lets_the_streams_in_flight_finish(journal: Journal) -> None:
    up = Upstream("graceful", [SCRIPTED], journal)
    try:
        up.wait_ready()
        async with client(up, max_retries=0) as api:
            stream = await api.chat.completions.create(
                model=SCRIPTED, messages=ask("count 60"), stream=True
            )
            first = await stream.__anext__()
            up.popen.send_signal(signal.SIGTERM)
            rest = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in [first, *rest])
        assert text == " ".join(str(i) for i in range(1, 61))
        assert rest[-1].choices[0].finish_reason == "stop"
        assert up.wait_exit() == 0
        assert "stopped" in journal.output("graceful")
    finally:
        up.stop()


# -- the real model ---------------------------------------------------------------------------


async def test_embedded_model_end_to_end(journal: Journal) -> None:
    """The embedded SmolLM2 on llama.cpp, served and called streaming and not: greedy
    decoding gives the same text both ways."""
    up = Upstream("smollm2", ["-s", "parallel=1"], journal)
    try:
        up.wait_ready()
        async with client(up) as api:
            [model] = [m.id async for m in api.models.list()]
            question = ask("What is the capital of France?")
            done = await api.chat.completions.create(
                model=model, messages=question, max_tokens=12, temperature=0
            )
            stream = await api.chat.completions.create(
                model=model, messages=question, max_tokens=12, temperature=0, stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        text = done.choices[0].message.content
        assert "SmolLM2" in model
        assert text and text.strip()
        assert streamed == text
    finally:
        up.stop()


# -- the command and the pure parts -----------------------------------------------------------


def test_command_refuses_a_bad_streamer_spec() -> None:
    for spec, said in (
        ("no_such_module:x", "cannot load"),
        ("json:JSONDecoder", "JSONDecoder, not a genbot Streamer"),
        ("json:dumps", "cannot make a streamer with json:dumps()"),
        ("json", "expected MODULE:ATTR"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "genbot", "serve", spec, "--port", "0"],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert said in done.stderr and "Traceback" not in done.stderr


async def test_command_says_when_the_port_is_taken(upstream: Upstream) -> None:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "genbot", "serve", SCRIPTED, "--port", str(upstream.port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{upstream.port}" in err.decode()


def test_parse_chat_defaults_and_overrides() -> None:
    defaults = GenerationSettings(max_new_tokens=9, temperature=0.3, stop=["x"])
    call = parse_chat({"messages": ask("hi")}, defaults)
    assert (call.stream, call.request.settings) == (False, defaults)
    assert call.request.settings.stop is not defaults.stop
    call = parse_chat(
        {"messages": ask("hi"), "stream": True, "stop": "END", "max_tokens": None, "seed": 3},
        defaults,
    )
    assert call.stream and call.request.settings.stop == ["END"]
    assert (call.request.settings.max_new_tokens, call.request.settings.seed) == (9, 3)
    with pytest.raises(RequestError, match="role must be one of"):
        parse_chat({"messages": [{"role": "robot", "content": "hi"}]}, defaults)


def test_completion_chunks_are_json() -> None:
    import json

    completion = Completion('mo"del')
    events = [completion.first(), completion.text('a "quoted"\n delta'), completion.last("stop")]
    datas = [e.decode().removeprefix("data: ") for e in b"".join(events).split(b"\n\n") if e]
    chunks = [json.loads(d) for d in datas[:-1]]
    assert datas[-1] == "[DONE]"
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": 'a "quoted"\n delta'},
        {},
    ]
    assert {c["model"] for c in chunks} == {'mo"del'}


def test_load_streamer_and_model_id(tmp_path: Path) -> None:
    assert type(load_streamer(SCRIPTED)).__name__ == "Scripted"
    with pytest.raises(ServeError, match="MODULE:ATTR"):
        load_streamer("serve_workers")
    assert model_id("/models/Qwen3-8B-Q4_K_M.gguf", "x") == "Qwen3-8B-Q4_K_M"
    assert model_id("Qwen/Qwen3-8B", "x") == "Qwen/Qwen3-8B"
    assert model_id("/srv/models/SmolLM2-135M/", "x") == "SmolLM2-135M"  # a local folder
    assert model_id("./models/qwen", "x") == model_id("~/qwen", "x") == "qwen"
    assert model_id("", "fallback") == "fallback"
    with pytest.raises(ValueError, match="parallel"):
        ChatServer(load_streamer(SCRIPTED), model="m", parallel=0)
