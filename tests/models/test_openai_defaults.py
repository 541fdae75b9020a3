"""The OpenAI backend's timeout defaults that issue 9 names: connect, first token 60 s (model
loading and long prompts are slow), and a stall timeout of 30 s between tokens; the same from
the bot's settings as from the constructor."""

from __future__ import annotations

from genbot.models.openai import OpenAIStreamer
from genbot.settings import Settings


def test_the_timeouts_default_to_60_s_for_the_first_token_and_30_s_between_tokens() -> None:
    from genbot.chatbot import make_backend

    made = OpenAIStreamer(base_url="http://127.0.0.1:9/v1")
    configured = make_backend(Settings(backend="openai", base_url="http://127.0.0.1:9/v1"))
    assert isinstance(configured, OpenAIStreamer)
    for backend in (made, configured):
        assert (backend.first_token_timeout, backend.token_timeout) == (60.0, 30.0)
        assert 0 < backend.connect_timeout < backend.first_token_timeout
