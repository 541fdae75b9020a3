"""The ``genbot`` command: run the ready-made bot, chat with it offline, show the settings.

A start that fails for a reason the user can fix (bad settings, a wrong token, privileged
intents not enabled, Discord out of reach, a model that cannot load or a model server that does
not answer) prints one line to stderr, saying what is wrong and what to do, and exits non-zero:
2 for what is fixed in the configuration or the developer portal, 1 for the rest. The traceback
goes to the log at DEBUG level only (``-s log_level=DEBUG``). :func:`explain` maps exceptions to
those lines through a table; anything it does not know is a bug and keeps its traceback.

Every command that loads settings first reads a ``.env`` file of the working directory into the
environment (variables already set win). Under ``genbot run`` and ``genbot playground``,
``SIGHUP`` reloads the settings from the same sources (see :meth:`genbot.chatbot.ChatBot.reload`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genbot.reload import DotEnv, ReloadError, SettingsSource, token_from_env
from genbot.settings import Settings, SettingsError, settings_help, settings_table

if TYPE_CHECKING:
    from genbot.chatbot import ChatBot

__all__ = ["ModelUnavailable", "app", "explain", "main"]

_log = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Deploy generative language models as Discord chat bots.",
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (see `genbot settings`)."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting: NAME=VALUE (repeatable)."),
]

PORTAL = "https://discord.com/developers/applications"


class ModelUnavailable(Exception):
    """The model did not answer its warm-up: it cannot load, or its server is not there.

    The message is the one line to show; the cause is chained.
    """


# -- what a failed start means -----------------------------------------------------------------


@dataclass(frozen=True)
class _Explanation:
    kinds: tuple[type[BaseException], ...]
    code: int
    line: Callable[[BaseException, Settings | None], str]
    discord: bool = False  # only where the bot talks to Discord (not in the playground)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _discord_unreachable(error: BaseException, settings: Settings | None) -> str:
    return (
        f"cannot reach Discord ({_first_line(error)}): check the network connection "
        "(proxy, firewall, DNS), then start again"
    )


def _explanations() -> list[_Explanation]:
    """The table, first match wins (discord.py and aiohttp are imported only when needed)."""
    import aiohttp
    import discord

    from genbot.metrics import MetricsError
    from genbot.models import ModelError
    from genbot.store import StoreError

    return [
        _Explanation((SettingsError,), 2, lambda e, s: f"bad configuration: {_first_line(e)}"),
        _Explanation((MetricsError,), 2, lambda e, s: _first_line(e)),
        _Explanation(
            (StoreError,),
            2,
            lambda e, s: f"the data store cannot be used: {_first_line(e)} (see data_dir)",
        ),
        _Explanation((ModelUnavailable,), 1, lambda e, s: _first_line(e)),
        _Explanation((ModelError,), 1, lambda e, s: f"the model cannot be used: {_first_line(e)}"),
        _Explanation(
            (discord.PrivilegedIntentsRequired,),
            2,
            lambda e, s: (
                "Discord refused the privileged intents: enable Message Content Intent "
                f"and Server Members Intent on your application's Bot page at {PORTAL}, then start "
                "again"
            ),
            discord=True,
        ),
        _Explanation(
            (discord.LoginFailure,),
            2,
            lambda e, s: (
                "Discord refused the token (401 Unauthorized): set DISCORD_TOKEN to the "
                f"token from your application's Bot page at {PORTAL} (Reset Token makes a new one)"
            ),
            discord=True,
        ),
        _Explanation(
            (discord.DiscordServerError,),
            1,
            lambda e, s: f"Discord is failing ({_first_line(e)}): try again in a few minutes",
            discord=True,
        ),
        _Explanation((discord.GatewayNotFound,), 1, _discord_unreachable, discord=True),
        _Explanation((aiohttp.ClientError, OSError), 1, _discord_unreachable, discord=True),
    ]


def explain(
    error: BaseException, settings: Settings | None = None, *, discord: bool = True
) -> tuple[int, str] | None:
    """The exit status and the one line for ``error``, or ``None`` when it is not a user error.

    Parameters
    ----------
    error:
        What ``genbot run`` or ``genbot playground`` raised.
    settings:
        The settings it ran with, if they loaded.
    discord:
        Whether the bot talked to Discord; if not (the playground), a network error is no
        sign of Discord out of reach, and is left unexplained.
    """
    for explanation in _explanations():
        if explanation.discord and not discord:
            continue
        if isinstance(error, explanation.kinds):
            return explanation.code, explanation.line(error, settings)
    return None


#: What the openai backend's worker raised at warm-up -> what to tell the user.
_SERVER_PROBLEMS = {
    "APIConnectionError": "nothing answers at {url}: start the model server, or set base_url to "
    "where it listens",
    "APITimeoutError": "the model server at {url} did not answer in time: check that it runs "
    "and is not overloaded",
    "AuthenticationError": "the model server at {url} refused the API key: set GENBOT_API_KEY "
    "(or OPENAI_API_KEY)",
    "PermissionDeniedError": "the model server at {url} refused the API key: set GENBOT_API_KEY "
    "(or OPENAI_API_KEY)",
    "NotFoundError": "the model server at {url} has no model {model} (or base_url is not its "
    "/v1 address): check model and base_url",
}

_WORKER_RAISED = re.compile(r"the worker raised (\w+): (.*)")


def model_problem(settings: Settings, error: BaseException) -> str:
    """The one line for a model that failed its warm-up with ``error``.

    Parameters
    ----------
    settings:
        The bot's settings (backend, model, base_url).
    error:
        A :class:`genbot.StreamError` (the worker failed or died) or :class:`TimeoutError`.
    """
    reason = _first_line(error)
    found = _WORKER_RAISED.match(reason)
    kind, detail = found.groups() if found else ("", reason)
    if settings.backend == "openai":
        known = _SERVER_PROBLEMS.get(kind)
        if known is not None:
            return known.format(url=settings.base_url, model=repr(settings.model))
        return f"the model server at {settings.base_url} failed at start-up: {detail}"
    if isinstance(error, TimeoutError):
        return f"{reason}: the model is too big or the machine too busy; try a smaller model"
    what = "a GGUF chat model" if settings.backend == "llamacpp" else "a chat (instruct) model"
    return f"the model could not be loaded ({detail}): check that model names {what}"


def _chat_bot(
    settings: Settings, source: SettingsSource | None = None, *, stop_on_sigterm: bool = False
) -> ChatBot:
    """The ready-made bot, with its warm-up failures told apart from Discord's; with a
    ``source``, ``SIGHUP`` and ``/reload`` read the settings from it again; with
    ``stop_on_sigterm``, ``SIGTERM`` (``docker stop``, systemd) shuts it down gracefully."""
    from genbot.chatbot import ChatBot
    from genbot.reload import Changes
    from genbot.streaming import StreamError

    class CommandChatBot(ChatBot):
        async def setup_hook(self) -> None:
            if self.load_settings is not None:
                _on_signal("SIGHUP", self._reload_in_background)
            if stop_on_sigterm:
                _on_signal("SIGTERM", self._close_in_background)
            try:
                await super().setup_hook()
            except (StreamError, TimeoutError) as error:
                raise ModelUnavailable(model_problem(self.settings, error)) from error

        def _reload_in_background(self) -> None:
            _log.info("SIGHUP received: reloading the config")
            _in_background(_reload_quietly(self), "genbot: SIGHUP reload")

        def _close_in_background(self) -> None:
            _log.info("SIGTERM received: shutting down")
            _in_background(self.close(), "genbot: SIGTERM shutdown")

        async def reconfigure(self, settings: Settings) -> Changes:
            changes = await super().reconfigure(settings)
            if "log_level" in changes.changed:
                logging.getLogger().setLevel(settings.log_level.upper())
            return changes

    return CommandChatBot(settings, load_settings=None if source is None else source.load)


#: Tasks started by signals (asyncio keeps only weak references to tasks).
_signalled: set[asyncio.Task[None]] = set()


def _in_background(work: Coroutine[Any, Any, None], name: str) -> None:
    task = asyncio.create_task(work, name=name)
    _signalled.add(task)
    task.add_done_callback(_signalled.discard)


async def _reload_quietly(bot: ChatBot) -> None:
    try:
        await bot.reload()
    except ReloadError:
        pass  # logged by the bot; the running config stays


def _on_signal(name: str, handler: Callable[[], None]) -> None:
    """Call ``handler`` on the signal ``name`` (where the platform and thread allow it)."""
    number = getattr(signal, name, None)
    if number is None:  # pragma: no cover - Windows has no SIGHUP
        return
    try:
        asyncio.get_running_loop().add_signal_handler(number, handler)
    except (RuntimeError, ValueError, NotImplementedError) as error:  # not the main thread
        _log.debug("%s is not handled here: %s", name, error)


def _explained(
    settings: Settings | None, action: Callable[[], int | None], *, discord: bool = True
) -> int:
    """Run ``action``; a user error ends in one line on stderr and :class:`typer.Exit`."""
    try:
        return action() or 0
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as error:
        found = explain(error, settings, discord=discord)
        if found is None:
            raise
        code, line = found
        _log.debug("the start failed: %s", line, exc_info=error)
        typer.secho(f"genbot: {line}", err=True, fg="red")
        raise typer.Exit(code) from None


# -- commands ----------------------------------------------------------------------------------


def _fail(line: str, code: int = 2) -> typer.Exit:
    typer.secho(f"genbot: {line}", err=True, fg="red")
    return typer.Exit(code)


def _source(config: Path | None, overrides: list[str] | None) -> SettingsSource:
    """Where the settings come from: ``config``, the environment with ./.env, ``--set``."""
    pairs = {}
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"bad configuration: --set {item!r}: expected NAME=VALUE")
        pairs[name.strip()] = value
    return SettingsSource(config, pairs, DotEnv(".env"))


def _load(config: Path | None, overrides: list[str] | None) -> Settings:
    return _load_from(_source(config, overrides))


def _load_from(source: SettingsSource) -> Settings:
    try:
        settings = source.load()
    except SettingsError as error:
        raise _fail(f"bad configuration: {error}") from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import discord

    # A chat bot has no voice: don't warn at every start that voice libraries are missing.
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    return settings


def _import_bot(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise typer.BadParameter("expected MODULE:CLASS, e.g. mybot:MyBot", param_hint="BOT")
    if os.getcwd() not in sys.path:  # as `python -m` would: a mybot.py here is importable
        sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise typer.BadParameter(f"cannot load {spec}: {error}", param_hint="BOT") from error
    if not callable(found):
        raise typer.BadParameter(f"{spec} is not a Genbot subclass", param_hint="BOT")
    return found


@app.command(epilog=settings_help())
def run(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Run the chat bot on Discord. The bot token comes from DISCORD_TOKEN (or
    DISCORD_BOT_TOKEN), which a .env file in the working directory may set. SIGHUP reloads
    the config; SIGTERM shuts the bot down gracefully."""
    source = _source(config, overrides)
    settings = _load_from(source)
    token = token_from_env()
    if not token:
        raise _fail(
            f"set DISCORD_TOKEN to your bot's token (from its Bot page at {PORTAL}), in the "
            "environment or in a .env file here"
        )

    def start() -> None:
        _chat_bot(settings, source, stop_on_sigterm=True).run(token, log_handler=None)

    _explained(settings, start)


@app.command(epilog=settings_help())
def playground(
    bot: Annotated[
        str | None,
        typer.Argument(
            help="MODULE:CLASS of a Genbot subclass to chat with; default: the ready-made chat "
            "bot with the configured model."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    attach: Annotated[
        list[Path] | None,
        typer.Option(
            "--attach",
            metavar="FILE",
            help="Attach FILE to the first message you send (repeatable); /attach FILE typed "
            "attaches one to the next message.",
        ),
    ] = None,
) -> None:
    """Chat with a bot offline, on a local Discord server: type as a user, see its replies.

    When standard input is not a terminal, each line is sent as a message and the command
    exits after the bot has answered the last one.
    """
    source = _source(config, overrides)
    settings = _load_from(source)
    from genbot.playground import read_attachments, run_playground

    try:
        read_attachments(attach or [])  # a file that cannot be read: one line, before the start
    except ValueError as error:
        raise _fail(str(error)) from None
    factory = (lambda: _chat_bot(settings, source)) if bot is None else _import_bot(bot)

    def play() -> int:
        return run_playground(factory, attach=attach or [])

    raise typer.Exit(_explained(settings, play, discord=False))


@app.command(epilog=settings_help())
def serve(
    streamer: Annotated[
        str | None,
        typer.Argument(
            help="MODULE:ATTR of your own Streamer (or a class or function that makes one) to "
            "serve; default: the configured backend and model."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The model to serve (the setting 'model'); with MODULE:ATTR, the name it is "
            "served as."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")
    ] = 8000,
    queue: Annotated[
        int | None,
        typer.Option(
            help="Chats that may wait for a slot beyond the 'parallel' ones generating; more "
            "are answered 429. Default: 2 x parallel.",
            min=0,
        ),
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds chats in flight may take to finish at shutdown.", min=0)
    ] = 30.0,
) -> None:
    """Serve the model as an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models,
    /health), e.g. on a GPU machine behind a load balancer. With GENBOT_API_KEY set, clients
    must send it (Authorization: Bearer). SIGINT or SIGTERM stops it gracefully."""
    # With your own streamer, --model only names it (it is no file of the configured backend).
    named = model if streamer else None
    settings = _load(
        config, [*(overrides or []), *([f"model={model}"] if model and not streamer else [])]
    )
    import asyncio

    from genbot.serve import ChatServer, ServeError, load_streamer, model_id
    from genbot.serve import serve as serve_http
    from genbot.streaming import StreamError

    def start() -> None:
        from genbot.chatbot import generation_settings, make_backend
        from genbot.models import default_model_path

        try:
            backend = load_streamer(streamer) if streamer else make_backend(settings)
        except ServeError as error:
            raise _fail(str(error)) from None
        fallback = streamer or (
            Path(default_model_path()).stem if settings.backend == "llamacpp" else "genbot"
        )
        server = ChatServer(
            backend,
            model=model_id(named or settings.model, fallback),
            defaults=generation_settings(settings),
            parallel=settings.parallel,
            queue=queue,
            api_key=os.environ.get("GENBOT_API_KEY", "").strip() or None,
        )
        try:
            asyncio.run(serve_http(server, host=host, port=port, grace=grace))
        except ServeError as error:
            raise _fail(str(error), 1) from None
        except (StreamError, TimeoutError) as error:
            raise ModelUnavailable(model_problem(settings, error)) from error

    _explained(settings, start, discord=False)


@app.command(epilog=settings_help())
def doctor(
    config: ConfigOption = None,
    overrides: SetOption = None,
    load_model: Annotated[
        bool,
        typer.Option(
            "--load-model", help="Load the model and generate one token (slow for a big model)."
        ),
    ] = False,
) -> None:
    """Check the set-up, one line each: the config, the token, the privileged intents, the
    bot's permissions in every server's channels, the model; then print the invite URL.
    Exits 1 when a check fails."""
    import asyncio

    from genbot.doctor import Finding, Status, diagnose

    colors = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "red"}

    def echo(finding: Finding) -> None:
        typer.secho(finding.line(), fg=colors.get(finding.status))

    logging.basicConfig(level=logging.ERROR)
    import discord

    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    report = asyncio.run(diagnose(_source(config, overrides), load_model=load_model, echo=echo))
    raise typer.Exit(report.exit_code)


@app.command("settings")
def show_settings(
    markdown: Annotated[bool, typer.Option(help="Print the README's Markdown table.")] = False,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Print every setting with its value (or, with --markdown, the README table)."""
    if markdown:
        typer.echo(settings_table())
        return
    settings = _load(config, overrides)
    for name in Settings.names():
        typer.echo(f"{name} = {getattr(settings, name)!r}")


def main() -> None:
    """Run the ``genbot`` command (``python -m genbot``)."""
    app()
