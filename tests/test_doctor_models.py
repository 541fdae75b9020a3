"""``genbot doctor`` checks every configured model: the top-level one and each named model of a
``[models.NAME]`` table (a profile or ``/model`` may pick it), each with its own line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from genbot.doctor import Report, Status, diagnose
from genbot.reload import SettingsSource
from genbot.testing import DiscordServer
from openai_stub import openai_stub
from test_cli import closed_port


async def doctor(tmp_path: Path, config_for: Callable[[str], str]) -> Report:
    """``genbot doctor``'s report, on the loopback Discord with a guild and #general, of the
    config ``config_for(base_url)`` where an OpenAI stub answers at ``base_url``."""
    async with DiscordServer() as server, openai_stub() as stub:
        guild = server.create_guild("Guild")
        server.create_channel(guild, "general")
        config = tmp_path / "genbot.toml"
        config.write_text(config_for(stub.base_url))
        return await diagnose(SettingsSource(config), token=server.token, timeout=10)


async def test_each_named_model_is_checked_and_one_that_does_not_answer_fails(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    report = await doctor(
        tmp_path,
        lambda url: (
            f'backend = "openai"\nbase_url = "{url}"\nmodel = "stub"\n'
            f'[models.good]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "stub"\n'
            f'[models.gone]\nbackend = "openai"\nbase_url = "{dead}"\nmodel = "big"\n'
        ),
    )
    lines = {finding.check: finding for finding in report.findings}
    assert lines["model"].status is Status.OK
    assert lines["model good"].status is Status.OK, lines["model good"].line()
    assert lines["model gone"].line().startswith(f"FAIL model gone: nothing answers at {dead} (")
    assert [f.check for f in report.failed] == ["model gone"] and report.exit_code == 1


async def test_a_config_with_only_good_named_models_passes(tmp_path: Path) -> None:
    report = await doctor(
        tmp_path,
        lambda url: f'[models.remote]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "stub"\n',
    )
    assert report.exit_code == 0, [f.line() for f in report.failed]
    remote = report.find("model remote")
    assert remote is not None and remote.status is Status.OK
    assert "answers (serves: stub)" in remote.text
