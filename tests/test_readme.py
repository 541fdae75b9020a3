"""The README's Python examples run as written (the bot, the testing snippet, the model one),
and the documents' links lead somewhere."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from genbot.profiles import Choice, model_settings, profile_settings, resolve
from genbot.settings import Settings

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def example(after_heading: str) -> str:
    """The first ```python block after the heading ``after_heading``."""
    section = README[README.index(after_heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_own_bot_example_passes_the_testing_example() -> None:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(example("## Write your own bot"), namespace)
    exec(example("## Testing your bot"), namespace)
    await namespace["test_my_bot"]()


def test_model_example_streams_a_reply(capsys: Any) -> None:
    exec(example("## Models"), {"__name__": "__main__"})
    assert len(capsys.readouterr().out.strip()) > 0


@pytest.mark.parametrize("document", ["README.md", "docs/design.md", "examples/README.md"])
def test_relative_links_lead_to_files_of_the_repository(document: str) -> None:
    path = ROOT / document
    targets = re.findall(r"\]\(([^)#]+)\)", path.read_text(encoding="utf-8"))
    local = [t for t in targets if "://" not in t]
    assert local, f"{document} links nothing in the repository"
    missing = [t for t in local if not (path.parent / t).exists()]
    assert missing == []


def definitions(source: str) -> dict[str, str]:
    """The top-level classes and functions of ``source``, as ASTs (comments and layout aside)."""
    nodes = ast.parse(source).body
    return {n.name: ast.dump(n) for n in nodes if isinstance(n, ast.ClassDef | ast.FunctionDef)}


@pytest.mark.parametrize(
    ("heading", "script"),
    [("## Write your own bot", "my_bot.py"), ("## Streaming: many chats", "streaming_echo.py")],
)
def test_the_readme_examples_are_the_scripts_in_examples(heading: str, script: str) -> None:
    """examples/ runs the README's code (tests/test_examples.py): they must not drift apart."""
    readme = definitions(example(heading))
    assert readme
    scripted = definitions((ROOT / "examples" / script).read_text(encoding="utf-8"))
    assert {name: scripted.get(name) for name in readme} == readme


def test_the_full_example_config_is_examples_server_toml_and_answers_as_described() -> None:
    """The README's full example is examples/server.toml; it loads, and the profile and model
    that answer in the server, its channels and a DM are the ones the README describes."""
    section = README[README.index("## A full example config") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    example = ROOT / "examples" / "server.toml"
    assert block.group(1) == example.read_text(encoding="utf-8")
    settings = Settings.load(example, environ={})
    places = {p.id: Choice(p.profile, p.model) for p in settings.places}
    server, off_topic, ideas, other = 222222222222222222, 333333333333333333, 444444444444444444, 5

    def answers(*chain: int) -> tuple[str, str]:
        found = resolve(chain, places, {}, settings.profiles, settings.models)
        return found.profile, found.model

    assert answers(other, server) == ("helpdesk", "big")  # a channel of the server
    assert answers(off_topic, server) == ("pirate", "small")
    assert answers(7, off_topic, server) == ("pirate", "small")  # a thread in #off-topic
    assert answers(ideas, server) == ("brainstorm", "small")
    assert answers(other) == ("default", "default")  # a DM
    helpdesk = profile_settings(settings, "helpdesk")
    assert (helpdesk.reply_mode, helpdesk.memory, helpdesk.reasoning) == ("thread", True, "spoiler")
    assert profile_settings(settings, "pirate").reply_mode == "reply"
    assert profile_settings(settings, "pirate").tools == []
    assert model_settings(settings, "big").vision and model_settings(settings, "big").parallel == 16
    assert settings.admin_tools == ["files__write_file"]
    assert sorted(settings.mcp) == ["files", "search"]


TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", README, re.S)


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[f"toml{i}" for i in range(len(TOML_BLOCKS))])
def test_every_toml_block_of_the_readme_is_a_config_that_loads(block: str, tmp_path: Path) -> None:
    if "transformers" in block and importlib.util.find_spec("transformers") is None:
        pytest.skip("the block names the transformers backend, which is not installed")
    config = tmp_path / "genbot.toml"
    config.write_text(block, encoding="utf-8")
    Settings.load(config, environ={})


def test_the_mcp_server_takes_five_lines_of_toml() -> None:
    section = README[README.index("### MCP servers") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    assert len(lines) == 5 and lines[0] == "[mcp.files]"
    assert len(TOML_BLOCKS) >= 6  # configuration, profiles, modes, media, MCP, the full example
