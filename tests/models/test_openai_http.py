"""The OpenAI backend's HTTP behaviour against real local servers (:mod:`chat_server`, and a
listening socket that never accepts): the request it sends, timeouts, retries, errors, and
closing the request when its caller goes away. Its SSE and error parsing, pure."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from chat_server import (
    DONE,
    MODEL,
    ChatServer,
    chat_server,
    chunk,
    drop,
    drop_before_answering,
    hang,
    hang_before_answering,
    raw,
    status,
    tokens,
)
from hypothesis import given
from hypothesis import strategies as st
from model_helpers import cancel, greedy, reply, started

from genbot import StreamError
from genbot.models import ChatRequest, GenerationSettings
from genbot.models.openai import (
    EventReader,
    OpenAIStreamer,
    decode_events,
    parse_retry_after,
    quick_text,
    read_chunk,
    server_message,
)


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    async with chat_server() as running:
        yield running


@contextmanager
def backend(url: str, **kwargs: object) -> Iterator[OpenAIStreamer]:
    streamer = OpenAIStreamer(url, **kwargs)  # type: ignore[arg-type]
    streamer.start_thread()
    try:
        yield streamer
    finally:
        streamer.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what it sends and reads -----------------------------------------------------------------------


async def test_streams_the_reply_of_the_servers_first_model(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENBOT_API_KEY", "sesame")
    request = ChatRequest(
        [{"role": "user", "name": "bob", "content": "Hi"}],
        GenerationSettings(max_new_tokens=7, temperature=0.5, top_p=0.8, stop=["x"], seed=3),
    )
    with backend(server.url, system_prompt="Be brief.", extra_body={"top_k": 4}) as streamer:
        deltas = [d async for d in streamer.chat(request)]
    assert "".join(deltas) == "Hello, world"
    assert server.requests == [
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "bob: Hi"},
            ],
            "stream": True,
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.8,
            "stop": ["x"],
            "seed": 3,
            "top_k": 4,
        }
    ]
    assert server.headers[0]["Authorization"] == "Bearer sesame"


async def test_a_proxy_in_the_environment_is_used(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The local server plays the proxy: the request reaches it for a host that is never
    # resolved (an .invalid name), as an absolute-form request that names that host.
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with backend("http://model-behind-proxy.invalid/v1") as streamer:
        deltas = [d async for d in streamer.chat(greedy("Hi", 5))]
    assert "".join(deltas) == "Hello, world"
    assert server.headers[-1]["Host"] == "model-behind-proxy.invalid"


async def test_a_reply_ends_at_its_finish_reason(server: ChatServer) -> None:
    # The finish event comes, then nothing until the client goes away: the caller's reply is
    # complete at the finish event, it does not wait for [DONE].
    server.script = [raw([chunk("Hi") + chunk(finish="stop")], then=hang)]
    with backend(server.url, model=MODEL, token_timeout=600) as streamer:
        assert await reply(streamer, greedy("Hi"), timeout=30) == "Hi"


async def test_a_server_that_does_not_stream_still_answers(server: ChatServer) -> None:
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole."}}]}
    server.script = [status(200, answer)]
    with backend(server.url, model=MODEL) as streamer:
        assert await reply(streamer, greedy("Hi")) == "Whole."


# -- a caller that goes away -----------------------------------------------------------------------


async def test_a_caller_that_goes_away_mid_reply_closes_the_request(server: ChatServer) -> None:
    server.script = [tokens(["one"], then=hang)]
    with backend(server.url, model=MODEL) as streamer:
        task, deltas = await started(streamer, greedy("Hi"))
        assert deltas == ["one"]
        await cancel(task)
        await asyncio.wait_for(server.disconnected.wait(), 30)
    assert server.disconnects == 1


async def test_a_caller_that_goes_away_before_the_first_token_closes_the_request(
    server: ChatServer,
) -> None:
    server.script = [hang_before_answering]

    async def ask() -> str:
        return await reply(streamer, greedy("Hi"))

    with backend(server.url, model=MODEL) as streamer:
        task = asyncio.create_task(ask())
        await asyncio.wait_for(server.arrived.wait(), 30)
        await cancel(task)
        await asyncio.wait_for(server.disconnected.wait(), 30)
    assert server.disconnects == 1


# -- timeouts --------------------------------------------------------------------------------------


async def test_no_first_token_within_its_timeout_fails_and_closes(server: ChatServer) -> None:
    server.script = [hang_before_answering]
    with backend(server.url, model=MODEL, first_token_timeout=0.5) as streamer:
        with pytest.raises(StreamError) as raised:
            await reply(streamer, greedy("Hi"))
        await asyncio.wait_for(server.disconnected.wait(), 30)
    assert f"POST {server.url}/chat/completions: no first token within 0.5 s" in str(raised.value)
    assert "APITimeoutError" in str(raised.value)
    assert len(server.requests) == 1  # a timeout is not retried


async def test_a_stall_after_the_first_token_fails_and_closes(server: ChatServer) -> None:
    server.script = [tokens(["one", " two"], then=hang)]
    with backend(server.url, model=MODEL, token_timeout=0.5) as streamer:
        seen: list[str] = []
        with pytest.raises(StreamError, match=r"no next token within 0\.5 s \(token_timeout\)"):
            async for delta in streamer.chat(greedy("Hi")):
                seen.append(delta)
        await asyncio.wait_for(server.disconnected.wait(), 30)
    assert "".join(seen) == "one two"
    assert len(server.requests) == 1


async def test_a_connect_timeout_is_its_own() -> None:
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    # connect hangs, as to a host that does not answer.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            url = f"http://127.0.0.1:{port}/v1"
            with backend(url, model=MODEL, connect_timeout=0.3) as streamer:
                with pytest.raises(StreamError) as raised:
                    await reply(streamer, greedy("Hi"))
        finally:
            for filler in fillers:
                filler.close()
    message = str(raised.value)
    assert f"APITimeoutError: POST {url}/chat/completions: could not connect in time" in message
    assert "attempts" not in message  # not retried


# -- retries ---------------------------------------------------------------------------------------


async def test_retries_honour_retry_after_in_seconds_and_as_a_date(server: ChatServer) -> None:
    def later() -> dict[str, str]:  # a date 1 to 2 s from when the answer is made
        return {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}

    server.script = [
        status(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}),
        status(503, {"error": "loading"}, later),
    ]
    with backend(server.url, model=MODEL) as streamer:
        assert await reply(streamer, greedy("Hi")) == "Hello, world"
    first, second, third = server.arrivals
    assert second - first >= 0.99  # waited as asked (lower bounds: they cannot flake)
    assert third - second >= 0.99
    assert len(server.requests) == 3


async def test_a_retry_after_past_the_first_token_deadline_is_not_waited(
    server: ChatServer,
) -> None:
    server.script = [status(429, {"error": {"message": "queue full"}}, {"Retry-After": "3600"})]
    with backend(server.url, model=MODEL, first_token_timeout=20) as streamer:
        with pytest.raises(StreamError) as raised:
            await reply(streamer, greedy("Hi"))
    assert (
        f"RateLimitError: POST {server.url}/chat/completions answered 429 Too Many Requests: "
        "queue full"
    ) in str(raised.value)
    assert len(server.requests) == 1


async def test_retries_give_up_after_max_retries(server: ChatServer) -> None:
    server.default = status(503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"})
    with backend(server.url, model=MODEL, max_retries=2) as streamer:
        with pytest.raises(StreamError, match=r"answered 503 Service Unavailable: overloaded \(3 "):
            await reply(streamer, greedy("Hi"))
    assert len(server.requests) == 3


async def test_a_connection_dropped_before_the_first_token_is_retried(server: ChatServer) -> None:
    server.script = [drop_before_answering]
    with backend(server.url, model=MODEL) as streamer:
        assert await reply(streamer, greedy("Hi")) == "Hello, world"
    assert len(server.requests) == 2


async def test_nothing_is_retried_once_text_reached_the_caller(server: ChatServer) -> None:
    server.script = [tokens(["one"], then=drop)]
    with backend(server.url, model=MODEL) as streamer:
        seen: list[str] = []
        with pytest.raises(
            StreamError, match=r"APIConnectionError: POST \S+: the connection broke"
        ):
            async for delta in streamer.chat(greedy("Hi")):
                seen.append(delta)
    assert seen == ["one"]
    assert len(server.requests) == 1


# -- errors ----------------------------------------------------------------------------------------


async def test_a_4xx_names_the_url_the_status_and_the_servers_message(server: ChatServer) -> None:
    says = "This model's maximum context length is 2048 tokens, you asked for 9000"
    server.script = [status(400, {"error": {"message": says, "type": "invalid_request_error"}})]
    with backend(server.url, model=MODEL) as streamer:
        with pytest.raises(StreamError) as raised:
            await reply(streamer, greedy("Hi"))
    expected = f"BadRequestError: POST {server.url}/chat/completions answered 400 Bad Request: "
    assert expected + says in str(raised.value)
    assert len(server.requests) == 1  # a 4xx other than 408, 409 and 429 is not retried


async def test_an_error_event_mid_stream_is_told(server: ChatServer) -> None:
    error = b'data: {"error": {"message": "CUDA out of memory"}}\n\n'
    server.script = [raw([chunk("a"), error])]
    with backend(server.url, model=MODEL) as streamer:
        with pytest.raises(StreamError, match="the server sent an error: CUDA out of memory"):
            await reply(streamer, greedy("Hi"))


async def test_a_stream_that_ends_early_is_an_error_not_a_short_reply(server: ChatServer) -> None:
    server.script = [tokens(["a"], finish=None, done=False)]
    with backend(server.url, model=MODEL) as streamer:
        with pytest.raises(StreamError, match="the stream ended before the reply was complete"):
            await reply(streamer, greedy("Hi"))


async def test_a_server_that_is_not_there_is_named() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with backend(url, model=MODEL, max_retries=1) as streamer:
        with pytest.raises(StreamError) as raised:
            await reply(streamer, greedy("Hi"))
    message = str(raised.value)
    assert f"APIConnectionError: POST {url}/chat/completions: cannot connect" in message
    assert "(2 attempts)" in message


# -- parsing (pure) --------------------------------------------------------------------------------

STREAM = (
    b": keep-alive\n\n"
    + chunk(role="assistant", content="")
    + b"event: message\nid: 7\ndata: "
    + chunk("hé")[6:-2]
    + b"\n\n"
    + b"data: {\n"
    + b'data: "choices": [{"delta": {"content": "\\n"}, "finish_reason": null}]}\n\n'
    + chunk(finish="length")
    + b'data: {"choices": [], "usage": {"completion_tokens": 2}}\n\n'
    + DONE
)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_events_are_the_same_however_the_stream_is_cut(newline: bytes) -> None:
    data = STREAM.replace(b"\n", newline)
    whole = EventReader().feed(data)
    assert [read_chunk(event) for event in whole[:-1]] == [
        ("", None),
        ("hé", None),
        ("\n", None),
        (None, "length"),
        (None, None),
    ]
    assert whole[-1] == b"[DONE]"
    for cut in range(1, len(data)):
        reader = EventReader()
        assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == whole
    reader = EventReader()
    assert [event for i in range(len(data)) for event in reader.feed(data[i : i + 1])] == whole


def test_decode_events_joins_the_text_of_one_chunk_and_stops_at_done() -> None:
    reader = EventReader()
    assert decode_events(reader, chunk("a") + chunk("b") + b"data: {") == (2, "ab", False, False)
    rest = b'"choices": []}\n\n' + chunk("c", finish="stop") + DONE + chunk("ignored")
    assert decode_events(reader, rest) == (4, "c", True, True)
    assert decode_events(EventReader(), b": ping\n\n") == (0, "", False, False)


def expected(event: dict[str, object]) -> tuple[str | None, str | None]:
    """What a chunk says, read with a full JSON decoding (the reference)."""
    choice = event["choices"][0]  # type: ignore[index]
    content, finish = choice["delta"].get("content"), choice.get("finish_reason")
    return content if isinstance(content, str) else None, finish


chunks = st.fixed_dictionaries(
    {
        "content": st.one_of(st.none(), st.text()),
        "role": st.sampled_from([None, "assistant"]),
        "reasoning": st.one_of(st.none(), st.text()),
        "finish": st.sampled_from([None, "stop", "length"]),
        "key_order": st.permutations(["role", "content", "reasoning_content"]),
        "choices": st.integers(1, 2),
        "compact": st.booleans(),
        "ascii": st.booleans(),
    }
)


@given(chunks)
def test_the_quick_path_reads_what_a_full_decoding_reads(spec: dict[str, object]) -> None:
    values = {"role": spec["role"], "content": spec["content"]}
    values["reasoning_content"] = spec["reasoning"]
    delta = {k: values[k] for k in spec["key_order"] if values[k] is not None}  # type: ignore[attr-defined]
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": spec["finish"]}
    event = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    event["choices"] = [choice] * int(spec["choices"])  # type: ignore[call-overload]
    separators = (",", ":") if spec["compact"] else (", ", ": ")
    data = json.dumps(event, separators=separators, ensure_ascii=bool(spec["ascii"])).encode()
    assert read_chunk(data) == expected(event)


@given(chunks)
def test_decode_events_finds_the_reasoning_nulls_or_not(spec: dict[str, object]) -> None:
    # Some servers send "reasoning_content": null (and "role": null) in every event: the
    # check that skips those must never skip a reasoning text.
    values = {"role": spec["role"], "content": spec["content"]}
    values["reasoning_content"] = spec["reasoning"]
    delta = {k: values[k] for k in spec["key_order"]}  # type: ignore[attr-defined]
    event = {"choices": [{"index": 0, "delta": delta, "finish_reason": spec["finish"]}]}
    separators = (",", ":") if spec["compact"] else (", ", ": ")
    data = json.dumps(event, separators=separators, ensure_ascii=bool(spec["ascii"])).encode()
    reasoning: list[str] = []
    decode_events(EventReader(), b"data: " + data + b"\n\n", None, reasoning)
    assert "".join(reasoning) == (spec["reasoning"] or "")


def test_the_quick_path_takes_the_usual_token_events_only() -> None:
    usual = b'{"choices":[{"index":0,"delta":{"content":" the"},"finish_reason":null}]}'
    assert quick_text(usual) == " the"
    assert quick_text(usual.replace(b" the", "é".encode())) == "é"  # UTF-8 as it is
    assert quick_text(usual.replace(b" the", rb"\u00e9")) is None  # an escape
    assert quick_text(usual.replace(b"null", b'"stop"')) is None
    assert quick_text(usual.replace(b'{"content"', b'{"role":"assistant","content"')) is None
    tool = (
        b'{"choices":[{"delta":{"tool_calls":[{"arguments":"{\\"delta\\":{\\"content\\":\\"x"}]}}]}'
    )
    assert quick_text(tool) is None


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"error": "boom"}', "the server sent an error: boom"),
    ],
)
def test_bad_events_are_errors(event: bytes, says: str) -> None:
    with pytest.raises(Exception, match=says):
        read_chunk(event)


def test_retry_after() -> None:
    now = 1_000_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("1500", milliseconds=True) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "inf", "nan"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"error": {"message": "bad key", "type": "auth"}}', "bad key"),
        (b'{"error": "model not found"}', "model not found"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (b"", "(no message)"),
        (b"x" * 600, "x" * 499 + "…"),
    ],
)
def test_server_message(body: bytes, says: str) -> None:
    assert server_message(body) == says


def test_the_bots_settings_reach_the_backend() -> None:
    from genbot.chatbot import make_backend
    from genbot.settings import Settings

    settings = Settings(backend="openai", base_url="http://127.0.0.1:9/v1", parallel=3)
    settings = settings.updated(
        {"connect_timeout": 2, "first_token_timeout": 90, "token_timeout": 5}, "test"
    )
    backend = make_backend(settings)
    assert isinstance(backend, OpenAIStreamer)
    assert (backend.base_url, backend.max_concurrency) == ("http://127.0.0.1:9/v1", 3)
    assert (backend.connect_timeout, backend.first_token_timeout, backend.token_timeout) == (
        2,
        90,
        5,
    )
    with pytest.raises(Exception, match=r"setting 'token_timeout': must be in \(0, 86400\]"):
        settings.updated({"token_timeout": 0}, "test")


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be at least 1, not 0"),
        ({"max_retries": -1}, "max_retries must not be negative, not -1"),
        ({"connect_timeout": 0}, "connect_timeout must be a positive number of seconds, not 0"),
        ({"first_token_timeout": float("nan")}, "first_token_timeout must be a positive"),
        ({"token_timeout": -1}, "token_timeout must be a positive number of seconds, not -1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        OpenAIStreamer("http://127.0.0.1:9/v1", **kwargs)  # type: ignore[arg-type]
