"""The ``[mcp.NAME]`` config tables, tool names and result texts (genbot.mcp, no server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from genbot.mcp import McpServerConfig, expand_variables, result_text, tool_names
from genbot.settings import Settings, SettingsError


def load(tmp_path: Path, text: str, **environ: str) -> Settings:
    path = tmp_path / "genbot.toml"
    path.write_text(text, encoding="utf-8")
    return Settings.load(path, environ=environ)


def test_a_stdio_and_an_http_server_in_the_config(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [mcp.files]
        command = "npx"
        args = ["-y", "server-filesystem", "/srv"]
        env = { ROOT = "/srv", KEY = "${FILES_KEY}" }
        cwd = "/tmp"
        timeout = 20
        tools = ["read_file"]
        admin_only = true

        [mcp.search]
        url = "https://mcp.example.com/mcp"
        headers = { Authorization = "Bearer ${SEARCH_KEY}" }
        """,
    )
    assert settings.mcp == {
        "files": McpServerConfig(
            name="files",
            command="npx",
            args=("-y", "server-filesystem", "/srv"),
            env=(("KEY", "${FILES_KEY}"), ("ROOT", "/srv")),
            cwd="/tmp",
            timeout=20.0,
            tools=("read_file",),
            admin_only=True,
        ),
        "search": McpServerConfig(
            name="search",
            url="https://mcp.example.com/mcp",
            headers=(("Authorization", "Bearer ${SEARCH_KEY}"),),
        ),
    }
    assert settings.mcp["search"].transport == "http"


def test_mcp_tables_beside_a_genbot_table_and_from_the_environment(tmp_path: Path) -> None:
    settings = load(tmp_path, '[genbot]\nbackend = "openai"\n\n[mcp.a]\ncommand = "a"\n')
    assert settings.mcp == {"a": McpServerConfig(name="a", command="a")}
    from_env = Settings.load(environ={"GENBOT_MCP": '{"b": {"url": "http://127.0.0.1:9/mcp"}}'})
    assert from_env.mcp == {"b": McpServerConfig(name="b", url="http://127.0.0.1:9/mcp")}


BAD: list[tuple[str, str]] = [
    ("[mcp.x]\n", r"setting 'mcp\.x': needs either command .* or url"),
    ('[mcp.x]\ncommand = "a"\nurl = "http://h/mcp"\n', r"'mcp\.x': needs either command"),
    ('[mcp.x]\ncomand = "a"\n', r"'mcp\.x': unknown key 'comand' \(did you mean 'command'\?\)"),
    ('[mcp.x]\ncommand = ""\n', r"'mcp\.x\.command': must name a program, got ''"),
    ("[mcp.x]\ncommand = 3\n", r"'mcp\.x\.command': expected a string, got 3"),
    ('[mcp.x]\ncommand = "a"\nargs = "b"\n', r"'mcp\.x\.args': expected a list of strings"),
    ('[mcp.x]\ncommand = "a"\nargs = [1]\n', r"'mcp\.x\.args': expected a list of strings"),
    ('[mcp.x]\ncommand = "a"\nenv = { A = 1 }\n', r"'mcp\.x\.env': expected a table of strings"),
    ('[mcp.x]\ncommand = "a"\nenv = { A = "${}" }\n', r"'mcp\.x\.env': A: '\$\{\}' is not a"),
    ('[mcp.x]\ncommand = "a"\nenv = { A = "${B" }\n', r"'mcp\.x\.env': A: '\$\{' without"),
    ('[mcp.x]\ncommand = "a"\ntimeout = 0\n', r"'mcp\.x\.timeout': must be in \(0, 3600\]"),
    ('[mcp.x]\ncommand = "a"\ntimeout = "5"\n', r"'mcp\.x\.timeout': expected a number"),
    ('[mcp.x]\ncommand = "a"\nstart_timeout = inf\n', r"'mcp\.x\.start_timeout': must be in"),
    ('[mcp.x]\ncommand = "a"\nadmin_only = "yes"\n', r"'mcp\.x\.admin_only': expected true or"),
    ('[mcp.x]\ncommand = "a"\ntools = "t"\n', r"'mcp\.x\.tools': expected a list of strings"),
    ('[mcp.x]\ncommand = "a"\nheaders = { A = "b" }\n', r"'mcp\.x': headers does not apply to a"),
    ('[mcp.x]\nurl = "http://h/mcp"\nargs = []\n', r"'mcp\.x': args does not apply to an HTTP"),
    ('[mcp.x]\nurl = "ftp://h/mcp"\n', r"'mcp\.x\.url': must be an http\(s\) URL"),
    ('[mcp.x]\nurl = "http://h/"\nheaders = { "A B" = "c" }\n', r"'mcp\.x\.headers': header"),
    ('[mcp."a.b"]\ncommand = "a"\n', r"setting 'mcp\.a\.b': a server name is letters, digits"),
    ('[mcp.a__b]\ncommand = "a"\n', r"setting 'mcp\.a__b': a server name is letters"),
    ("mcp = 3\n", r"setting 'mcp': expected \[mcp\.NAME\] tables, got 3"),
    ("mcp = { x = 3 }\n", r"setting 'mcp\.x': expected a \[mcp\.x\] table, got 3"),
]


@pytest.mark.parametrize(("text", "error"), BAD)
def test_a_bad_mcp_table_is_refused_with_one_line(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'genbot.toml'}: ")
    assert re.search(error, message), message


def test_bad_json_from_the_environment_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^environment variable GENBOT_MCP: setting 'mcp'"):
        Settings.load(environ={"GENBOT_MCP": "{nope"})


def test_variables_are_expanded_from_the_environment() -> None:
    assert expand_variables("Bearer ${K}/$HOME/${K}", {"K": "s3"}) == "Bearer s3/$HOME/s3"
    with pytest.raises(KeyError, match="MISSING"):
        expand_variables("${MISSING}", {})


def test_tool_names_are_ones_the_openai_api_accepts() -> None:
    long = "x" * 80
    names = tool_names("srv", ["b", "a.b", "a_b", "a/b", "", "ünï", long, long + "y"])
    assert names["a.b"] == "srv__a_b"
    assert names["a/b"] == "srv__a_b_2"  # sorted: "a.b" < "a/b" < "a_b"
    assert names["a_b"] == "srv__a_b_3"
    assert names[""] == "srv__tool"
    assert names["ünï"] == "srv___n_"
    assert names[long] == ("srv__" + long)[:64]
    assert names[long + "y"] == ("srv__" + long)[:62] + "_2"
    assert len(set(names.values())) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in names.values())
    # the same names whatever order the server lists its tools in
    assert tool_names("srv", list(reversed(list(names)))) == names


def _result(*content: Any, error: bool = False, structured: Any = None) -> CallToolResult:
    return CallToolResult(content=list(content), is_error=error, structured_content=structured)


def test_results_become_text() -> None:
    text = TextContent(type="text", text="hello")
    image = ImageContent(type="image", data="AA==", mime_type="image/png")
    link = ResourceLink(type="resource_link", uri="file:///a.txt", name="a")
    embedded = EmbeddedResource(
        type="resource", resource=TextResourceContents(uri="file:///b", text="inside")
    )
    blob = EmbeddedResource(
        type="resource",
        resource=BlobResourceContents(uri="file:///c", blob="AA==", mime_type="image/gif"),
    )
    assert result_text(_result(text, image, link, embedded, blob)) == (
        "hello\n[image (image/png) not shown]\n[resource link: file:///a.txt]\ninside\n"
        "[resource file:///c (image/gif) not shown]"
    )
    assert result_text(_result(text, error=True)) == "error: hello"
    assert result_text(_result(structured={"a": 1})) == '{"a": 1}'
    assert result_text(_result()) == "(no output)"
