"""The ``genbot`` command: run the ready-made bot, chat with it offline, show the settings."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from genbot.settings import Settings, SettingsError, settings_help, settings_table

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Deploy generative language models as Discord chat bots.",
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (see `genbot settings`).",
        exists=True,
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting: NAME=VALUE (repeatable)."),
]


def _load(config: Path | None, overrides: list[str] | None) -> Settings:
    pairs = {}
    for item in overrides or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        pairs[name.strip()] = value
    try:
        settings = Settings.load(config, overrides=pairs)
    except SettingsError as error:
        typer.secho(f"genbot: bad configuration: {error}", err=True, fg="red")
        raise typer.Exit(2) from error
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
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise typer.BadParameter(f"cannot load {spec}: {error}", param_hint="BOT") from error


@app.command(epilog=settings_help())
def run(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Run the chat bot on Discord. The bot token comes from DISCORD_TOKEN."""
    settings = _load(config, overrides)
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        typer.secho("genbot: set DISCORD_TOKEN to your bot's token", err=True, fg="red")
        raise typer.Exit(2)
    from genbot.chatbot import ChatBot

    ChatBot(settings).run(token, log_handler=None)


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
) -> None:
    """Chat with a bot offline, on a local Discord server: type as a user, see its replies.

    When standard input is not a terminal, each line is sent as a message and the command
    exits after the bot has answered the last one.
    """
    settings = _load(config, overrides)
    from genbot.playground import run_playground

    if bot is None:
        from genbot.chatbot import ChatBot

        def factory() -> Any:
            return ChatBot(settings)
    else:
        factory = _import_bot(bot)
    raise typer.Exit(run_playground(factory))


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
    app()
