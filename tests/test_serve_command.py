"""``genbot serve``'s own flags, as issue 9 names them: ``-c genbot.toml`` (its settings are
what the server serves with), ``--model NAME`` (the model it serves and lists), ``--host`` and
``--port``, with a user's streamer given as ``MODULE:ATTR``; called with the official ``openai``
client."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai

from serve_harness import Journal, Upstream

SCRIPTED = "serve_workers:Scripted"


async def test_config_file_model_host_and_port_flags(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text("[genbot]\nparallel = 3\nmax_new_tokens = 2\n")
    journal = Journal()
    args = [SCRIPTED, "-c", str(config), "--model", "my-model", "--host", "127.0.0.1"]
    up = Upstream("flags", args, journal)  # (the harness adds --port 0: a free port)
    try:
        up.wait_ready()
        assert up.url.startswith("http://127.0.0.1:") and up.port > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(up.url.removesuffix("/v1") + "/health") as response:
                assert response.status == 200
                health = await response.json()
        # parallel from the file (and the queue that follows from it), the name from --model
        assert (health["model"], health["parallel"], health["queue"]) == ("my-model", 3, 6)
        async with openai.AsyncOpenAI(base_url=up.url, api_key="none") as api:
            assert [m.id async for m in api.models.list()] == ["my-model"]
            done = await api.chat.completions.create(
                model="my-model", messages=[{"role": "user", "content": "count 5"}]
            )
        # the file's max_new_tokens is the default length of a reply
        assert (done.choices[0].message.content, done.choices[0].finish_reason) == (
            "1 2",
            "length",
        )
        assert done.model == "my-model"
    finally:
        up.stop()
