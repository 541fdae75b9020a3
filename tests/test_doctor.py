"""``genbot doctor``: every check passing and failing, against the loopback Discord server and
a loopback model server; the real command through ``tests/cli_launcher.py``, and
:func:`genbot.doctor.diagnose` in this process (faster, and its findings are data)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import discord
import pytest

from genbot.access import AccessList
from genbot.doctor import (
    ChannelView,
    Report,
    Status,
    diagnose,
    guild_finding,
    invite_url,
    missing_intents,
    models_finding,
)
from genbot.reload import SettingsSource
from genbot.settings import Settings
from genbot.testing import DiscordServer, FakeChannel, FakeGuild, FakeRole, FakeUser
from genbot.testing.permissions import channel_permissions
from openai_stub import openai_stub
from test_cli import closed_port, launch, loopback

#: view, send, attach files, read history, create public threads, send in threads
NEEDED = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16) | (1 << 35) | (1 << 38)
SEND = discord.Permissions(send_messages=True)


def world(server: DiscordServer) -> tuple[FakeGuild, FakeChannel]:
    guild = server.create_guild("Guild")
    return guild, server.create_channel(guild, "general")


async def doctor(
    server: DiscordServer, token: str | None = None, **settings: str
) -> tuple[Report, dict[str, str]]:
    """Run the checks in this process; the report and each check's line."""
    source = SettingsSource(None, settings, None)
    report = await diagnose(source, token=server.token if token is None else token, timeout=10)
    lines = {finding.check: finding.line() for finding in report.findings}
    assert len(lines) == len(report.findings), "one line per check"
    return report, lines


# -- everything passing ----------------------------------------------------------------------------


async def test_every_check_passes_and_the_invite_asks_for_exactly_what_genbot_needs() -> None:
    async with DiscordServer() as server, openai_stub() as stub:
        guild, _general = world(server)
        server.create_channel(guild, "random")
        report, lines = await doctor(server, backend="openai", base_url=stub.base_url, model="stub")
        assert server.unhandled_requests == []
        assert server.gateway_queries == [], "doctor uses REST only, the running bot stays online"
    assert report.exit_code == 0, lines
    assert lines["config"] == "OK   config: defaults and environment: valid"
    assert lines["token"] == f"OK   token: logs in as genbot (id {server.bot_user.id})"
    assert lines["intents"] == (
        "OK   intents: Message Content Intent and Server Members Intent are on"
    )
    assert lines["server 'Guild'"] == "OK   server 'Guild': the bot can chat in #general, #random"
    assert (
        lines["model"] == f"OK   model: the model server at {stub.base_url} answers (serves: stub)"
    )
    url = urlsplit(report.findings[-2].text)
    assert report.findings[-2].check == "invite"
    assert url.netloc == "discord.com" and url.path == "/oauth2/authorize"
    query = parse_qs(url.query)
    assert query == {
        "client_id": [str(server.application_id)],
        "scope": ["bot applications.commands"],
        "permissions": [str(NEEDED)],
    }
    assert report.findings[-2].text == invite_url(server.application_id)


async def test_the_command_passes_exits_0_and_prints_a_line_per_check(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    async with DiscordServer() as server, openai_stub() as stub:
        world(server)
        config.write_text(f'backend = "openai"\nbase_url = "{stub.base_url}"\n')
        env = {**loopback(server), "DISCORD_TOKEN": server.token}
        done = await launch("doctor", "-c", str(config), env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line[:4] for line in lines] == ["OK  ", "OK  ", "OK  ", "OK  ", "INFO", "OK  "], lines
    assert lines[0] == f"OK   config: {config}: valid"
    assert lines[3] == "OK   server 'Guild': the bot can chat in #general"
    assert lines[4].startswith("INFO invite: https://discord.com/oauth2/authorize?client_id=")
    assert "Traceback" not in done.stderr


# -- each check failing ----------------------------------------------------------------------------


async def test_an_application_without_the_privileged_intents_fails() -> None:
    async with DiscordServer(privileged_intents=False) as server:
        world(server)
        report, lines = await doctor(server)
    assert report.exit_code == 1
    assert [f.check for f in report.failed] == ["intents"]
    assert lines["intents"] == (
        "FAIL intents: Message Content Intent and Server Members Intent are off: switch them on "
        f"at https://discord.com/developers/applications/{server.application_id}/bot "
        "(Privileged Gateway Intents)"
    )


async def test_a_channel_where_the_bot_lacks_send_messages_fails() -> None:
    async with DiscordServer() as server:
        guild, _general = world(server)
        quiet = server.create_channel(guild, "quiet")
        server.set_overwrite(quiet, guild.roles[guild.id], deny=SEND)
        report, lines = await doctor(server)
        assert report.exit_code == 1
        assert [f.check for f in report.failed] == ["server 'Guild'"]
        line = lines["server 'Guild'"]
        assert line.startswith("FAIL server 'Guild': #quiet lacks Send Messages, Attach Files: ")
        assert "#general" not in line
        assert "Edit Channel > Permissions" in line

        # a member overwrite for the bot allows it again: nothing fails
        server.set_overwrite(quiet, server.bot_user, allow=SEND)
        report, lines = await doctor(server)
        assert report.exit_code == 0, lines
        assert (
            lines["server 'Guild'"] == "OK   server 'Guild': the bot can chat in #general, #quiet"
        )


async def test_roles_administrator_and_hidden_channels_count_as_on_discord() -> None:
    async with DiscordServer() as server:
        guild, _general = world(server)
        hidden = server.create_channel(guild, "staff")
        everyone = guild.roles[guild.id]
        server.set_overwrite(hidden, everyone, deny=discord.Permissions(view_channel=True))
        report, lines = await doctor(server)
        assert lines["server 'Guild'"] == (
            "OK   server 'Guild': the bot can chat in #general; 1 hidden from it"
        ), "a channel the bot cannot see is not one it will use"

        everyone.permissions = discord.Permissions(view_channel=True, send_messages=True).value
        report, lines = await doctor(server)
        assert lines["server 'Guild'"].startswith(
            "FAIL server 'Guild': #general lacks Read Message History, Create Public Threads, "
            "Send Messages in Threads, Attach Files: allow them to the bot's role"
        )
        role = server.create_role(guild, "bots", permissions=NEEDED)
        server.add_member(guild, server.bot_user, roles=[role])
        report, lines = await doctor(server)
        assert report.exit_code == 0, lines

        admin = server.create_role(guild, "admin", permissions=discord.Permissions.all().value)
        server.add_member(guild, server.bot_user, roles=[admin])
        report, lines = await doctor(server)
        assert lines["server 'Guild'"] == (
            "OK   server 'Guild': the bot can chat in #general, #staff"
        ), "an administrator sees and may do everything"


async def test_configured_channels_are_checked_and_blacklisted_ones_skipped() -> None:
    async with DiscordServer() as server:
        guild, general = world(server)
        hidden = server.create_channel(guild, "staff")
        server.set_overwrite(
            hidden, guild.roles[guild.id], deny=discord.Permissions(view_channel=True)
        )
        report, lines = await doctor(server, channels=f"[{hidden.id}, 42]")
        assert report.exit_code == 1
        assert lines["server 'Guild'"].startswith(
            "FAIL server 'Guild': #staff lacks View Channel, Send Messages"
        ), "a whitelisted channel is used even when the bot cannot see it"
        assert lines["channels"].startswith(
            "FAIL channels: 42: not a text channel of any server the bot is in"
        )

        server.set_overwrite(general, guild.roles[guild.id], deny=SEND)
        report, lines = await doctor(server, channels=f'{{"blacklist": [{general.id}]}}')
        assert lines["server 'Guild'"] == (
            "FAIL server 'Guild': the bot can see no text channel: give its role View Channel in "
            "the channels it should chat in"
        ), "the blacklisted channel does not count, and #staff is hidden"


async def test_a_bad_token_fails_and_skips_the_discord_checks() -> None:
    async with DiscordServer() as server:
        world(server)
        report, lines = await doctor(server, token="not-the-token")
    assert report.exit_code == 1
    assert [f.check for f in report.failed] == ["token"]
    assert lines["token"].startswith(
        "FAIL token: Discord refused the token (401 Unauthorized): set DISCORD_TOKEN"
    )
    assert "intents" not in lines and "invite" not in lines


async def test_the_command_with_a_bad_token_exits_1_with_its_line() -> None:
    async with DiscordServer() as server:
        env = {**loopback(server), "DISCORD_TOKEN": "not-the-token"}
        done = await launch("doctor", env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL token: Discord refused the token (401 Unauthorized)" in done.stdout
    assert "Traceback" not in done.stderr


async def test_no_token_fails() -> None:
    async with DiscordServer() as server:
        report, lines = await doctor(server, token="")
    assert report.exit_code == 1
    assert lines["token"].startswith("FAIL token: set DISCORD_TOKEN to your bot's token")


async def test_a_model_server_that_does_not_answer_fails() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    async with DiscordServer() as server:
        world(server)
        report, lines = await doctor(server, backend="openai", base_url=url)
    assert report.exit_code == 1
    assert [f.check for f in report.failed] == ["model"]
    assert lines["model"].startswith(f"FAIL model: nothing answers at {url} (")
    assert lines["model"].endswith("start the model server, or set base_url to where it listens")


async def test_load_model_generates_a_token_or_says_why_it_cannot() -> None:
    async with DiscordServer() as server, openai_stub() as stub:
        world(server)
        source = SettingsSource(None, {"backend": "openai", "base_url": stub.base_url}, None)
        report = await diagnose(source, token=server.token, load_model=True, timeout=10)
        assert stub.asked == ["Hi"], "one token was generated"
        model = report.find("model")
        assert model is not None and model.status is Status.OK
        assert model.text.startswith("the embedded SmolLM2 loaded and answered in ")

        url = f"http://127.0.0.1:{closed_port()}/v1"
        source = SettingsSource(None, {"backend": "openai", "base_url": url}, None)
        report = await diagnose(source, token=server.token, load_model=True, timeout=10)
    assert [f.check for f in report.failed] == ["model"]
    assert report.failed[0].line() == (
        f"FAIL model: nothing answers at {url}: start the model server, or set base_url to "
        "where it listens"
    )


async def test_a_local_model_is_trusted_to_the_settings_check() -> None:
    async with DiscordServer() as server:
        world(server)
        _report, lines = await doctor(server)
    assert lines["model"] == (
        "OK   model: llamacpp: the embedded SmolLM2 is there (--load-model loads it and "
        "generates a token)"
    )


def test_what_a_model_servers_answer_means() -> None:
    settings = Settings(backend="openai", base_url="http://127.0.0.1:1/v1", model="big")
    refused = models_finding(settings, 401, None)
    assert refused.status is Status.FAIL and "set GENBOT_API_KEY" in refused.text
    not_json = models_finding(settings, 200, "<html>")
    assert not_json.status is Status.FAIL and "usually ending in /v1" in not_json.text
    other = models_finding(settings, 200, {"data": [{"id": "small"}]})
    assert other.status is Status.WARN, "llama.cpp's server answers any model name"
    assert "does not list model 'big' (it serves: small)" in other.text
    assert models_finding(settings, 200, {"data": [{"id": "big"}]}).status is Status.OK


async def test_an_invalid_config_fails_with_its_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text("temperature = 9\n")
    async with DiscordServer() as server:
        world(server)
        env = {**loopback(server), "DISCORD_TOKEN": server.token}
        done = await launch("doctor", "-c", str(config), env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"FAIL config: bad configuration: {config}: setting 'temperature': must be from 0 to 2, "
        "got 9"
    )
    assert lines[1].startswith("OK   token: logs in as genbot"), "the other checks still run"
    assert lines[-1] == "INFO model: not checked: the configuration is not valid"


# -- the decisions and the loopback server's permissions ------------------------------------------


async def test_a_bot_in_no_server_is_a_warning_and_a_server_it_cannot_read_fails() -> None:
    async with DiscordServer() as server:
        report, lines = await doctor(server)
        assert report.exit_code == 0, lines
        assert (
            lines["servers"] == "WARN servers: the bot is in no server yet: invite it (URL below)"
        )

        world(server)
        server.fail_requests("GET", "/guilds/{guild_id}/channels", status=403, times=1)
        report, lines = await doctor(server)
    assert [f.check for f in report.failed] == ["server 'Guild'"]
    assert lines["server 'Guild'"] == (
        "FAIL server 'Guild': its channels could not be read (403 Forbidden (error code: 0): "
        "403: Forbidden): run it again"
    )
    assert "invite" in lines and "model" in lines, "the other checks still ran"


def test_verified_bots_intent_flags_count_too() -> None:
    flags = discord.ApplicationFlags(gateway_message_content=True, gateway_guild_members=True)
    assert missing_intents(flags) == []
    limited = discord.ApplicationFlags(gateway_guild_members_limited=True)
    assert missing_intents(limited) == ["Message Content Intent"]


def test_guild_finding_lists_a_few_channels_per_problem() -> None:
    lacking = discord.Permissions(NEEDED & ~SEND.value)
    channels = [ChannelView(i, f"c{i}", lacking) for i in range(7)]
    finding = guild_finding("G", channels, AccessList())
    assert finding.status is Status.FAIL
    assert finding.text.startswith("#c0, #c1, #c2, #c3, #c4 and 2 more lack Send Messages: ")


@pytest.mark.parametrize("where", ["everyone", "role", "member"])
async def test_the_loopback_server_computes_permissions_as_discord_py_does(where: str) -> None:
    async with DiscordServer() as server:
        guild, general = world(server)
        role = server.create_role(guild, "bots", permissions=(1 << 35))
        server.add_member(guild, server.bot_user, roles=[role])
        target: dict[str, FakeRole | FakeUser] = {
            "everyone": guild.roles[guild.id],
            "role": role,
            "member": server.bot_user,
        }
        server.set_overwrite(general, target[where], allow=1 << 13, deny=SEND.value | (1 << 35))
        client = discord.Client(intents=discord.Intents.default())
        await client.login(server.token)
        try:
            fetched = await client.fetch_guild(guild.id)
            (channel,) = await fetched.fetch_channels()
            member = await fetched.fetch_member(server.bot_user.id)
            seen = channel.permissions_for(member).value
        finally:
            await client.close()
    computed = channel_permissions(guild, general, server.bot_user.id)
    # discord.py also drops what needs Send Messages (attach, embed...) when it is denied
    assert seen == computed & ~((1 << 15) | (1 << 14) | (1 << 17) | (1 << 12))
    assert computed & (1 << 13) and not computed & SEND.value
    assert not computed & (1 << 35), "the overwrite's deny beats the role's permission"


async def test_the_loopback_server_refuses_what_the_bot_may_not_do() -> None:
    async with DiscordServer() as server:
        guild, _ = world(server)
        quiet = server.create_channel(guild, "quiet")
        staff = server.create_channel(guild, "staff")
        everyone = guild.roles[guild.id]
        no_threads = discord.Permissions(create_public_threads=True, read_message_history=True)
        server.set_overwrite(quiet, everyone, deny=SEND | no_threads)
        server.set_overwrite(staff, everyone, deny=discord.Permissions(view_channel=True))
        server.create_message(quiet, server.bot_user, {"content": "from before"})
        client = discord.Client(intents=discord.Intents.default())
        await client.login(server.token)
        try:
            channels = await (await client.fetch_guild(guild.id)).fetch_channels()
            fetched = {c.name: c for c in channels if isinstance(c, discord.TextChannel)}
            sent = await fetched["general"].send("hi")
            assert sent.content == "hi"
            with pytest.raises(discord.Forbidden) as refused:
                await fetched["quiet"].send("hi")
            assert refused.value.code == 50013  # Missing Permissions
            with pytest.raises(discord.Forbidden) as refused:
                await fetched["quiet"].create_thread(
                    name="t", type=discord.ChannelType.public_thread
                )
            assert refused.value.code == 50013
            assert [m async for m in fetched["quiet"].history()] == []
            with pytest.raises(discord.Forbidden) as refused:
                await fetched["staff"].send("hi")
            assert refused.value.code == 50001  # Missing Access
        finally:
            await client.close()
    assert [m["content"] for m in server.messages(quiet)] == ["from before"]
