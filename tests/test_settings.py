"""Settings: one dataclass is the config file, the environment and the README table.

Every value the running bot cannot use is refused when the settings are loaded, with one line
naming the source (file, variable or --set), the setting and the reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import genbot.settings as settings_module
from genbot.settings import Settings, SettingsError, settings_table


def test_defaults_need_no_file() -> None:
    settings = Settings.load(environ={})
    assert settings.backend == "llamacpp"
    assert settings.model == ""
    assert settings.users is None and settings.admins is None


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text('temperature = 0.7\nstop = ["###"]\nadmins = [42]\nmax_new_tokens = 64\n')
    settings = Settings.load(
        config, environ={"GENBOT_TEMPERATURE": "0.1"}, overrides={"max_new_tokens": "32"}
    )
    assert settings.temperature == pytest.approx(0.1)
    assert settings.stop == ["###"]
    assert settings.admins == [42]
    assert settings.max_new_tokens == 32


def test_a_genbot_table_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text("[genbot]\ncontext_limit = 4\n[genbot.roles]\nblacklist = [7]\n")
    loaded = Settings.load(config, environ={})
    assert loaded.context_limit == 4
    assert loaded.roles == {"blacklist": [7]}


# -- every rule, from every source -------------------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` written as a TOML value (inf and nan included)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def refusal(source: str, name: str, value: Any, tmp_path: Path) -> tuple[str, str]:
    """Load ``name = value`` from ``source`` ("file", "env" or "set"): the error and the prefix
    it must start with."""
    if source == "file":
        config = tmp_path / "genbot.toml"
        config.write_text(f"{name} = {toml_value(value)}\n", encoding="utf-8")
        with pytest.raises(SettingsError) as error:
            Settings.load(config, environ={})
        return str(error.value), f"{config}: setting {name!r}: "
    if source == "env":
        variable = f"GENBOT_{name.upper()}"
        with pytest.raises(SettingsError) as error:
            Settings.load(environ={variable: value})
        return str(error.value), f"environment variable {variable}: setting {name!r}: "
    with pytest.raises(SettingsError) as error:
        Settings.load(environ={}, overrides={name: value})
    return str(error.value), f"--set {name}: setting {name!r}: "


F, E, S = ("file",), ("env",), ("set",)
FES = F + E + S
NAN, INF = float("nan"), float("inf")

#: (setting, value, sources to try it from, the reason the error gives)
RULES: list[tuple[str, Any, tuple[str, ...], str]] = [
    # choices
    ("backend", "gpt", FES, "must be one of llamacpp, transformers, openai"),
    ("log_level", "loud", FES, "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("log_level", 10, F, "expected a string"),
    # base_url: an http(s) URL
    ("base_url", "ftp://127.0.0.1/v1", FES, "must be an http(s) URL"),
    ("base_url", "http:///v1", FES, "must be an http(s) URL"),
    ("base_url", "127.0.0.1:8000", FES, "must be an http(s) URL"),
    ("base_url", "http://127.0.0.1:99999/v1", FES, "must be an http(s) URL"),
    ("base_url", "http://local host/v1", F, "must be an http(s) URL"),
    # whole numbers and their ranges
    ("parallel", 0, FES, "must be from 1 to 64"),
    ("parallel", -1, F, "must be from 1 to 64"),
    ("parallel", 10**9, FES, "must be from 1 to 64"),
    ("parallel", "1e9", E, "expected a whole number"),
    ("max_new_tokens", 0, FES, "must be from 1 to 8192"),
    ("max_new_tokens", 10**6, FES, "must be from 1 to 8192"),
    ("max_new_tokens", 1.5, F, "expected a whole number"),
    ("max_new_tokens", INF, F, "expected a whole number"),
    ("max_new_tokens", NAN, F, "expected a whole number"),
    ("max_new_tokens", "inf", E, "expected a whole number"),
    ("max_new_tokens", "lots", E + S, "expected a whole number"),
    ("context_limit", 0, FES, "must be from 1 to 1000"),
    ("context_limit", 10**6, F, "must be from 1 to 1000"),
    ("context_chars", 0, FES, "must be from 1 to 1e+06"),
    ("context_chars", 10**12, F, "must be from 1 to 1e+06"),
    ("seed", -2, FES, "must be -1 or 0 to 4294967294"),
    ("seed", 2**32 - 1, FES, "must be -1 or 0 to 4294967294"),
    ("seed", 2**64, F, "must be -1 or 0 to 4294967294"),
    # numbers: finite, in range
    ("temperature", NAN, F, "must be a finite number"),
    ("temperature", "nan", E + S, "must be a finite number"),
    ("temperature", "inf", E + S, "must be a finite number"),
    ("temperature", -0.1, FES, "must be from 0 to 2"),
    ("temperature", 2.5, FES, "must be from 0 to 2"),
    ("temperature", "hot", E + S, "expected a number"),
    ("top_p", 0, FES, "must be in (0, 1]"),
    ("top_p", 1.5, FES, "must be in (0, 1]"),
    ("top_p", "NaN", E, "must be a finite number"),
    ("repeat_penalty", 0, FES, "must be in (0, 2]"),
    ("repeat_penalty", 3, F, "must be in (0, 2]"),
    ("repeat_penalty", -INF, F, "must be a finite number"),
    ("queue_timeout", 0, FES, "must be in (0, 86400]"),
    ("queue_timeout", 1e9, F, "must be in (0, 86400]"),
    ("queue_timeout", INF, F, "must be a finite number"),
    ("queue_timeout", "inf", E, "must be a finite number"),
    ("stall_timeout", 0.5, FES, "must be from 1 to 86400"),
    ("stall_timeout", -1, F, "must be from 1 to 86400"),
    ("stall_timeout", NAN, F, "must be a finite number"),
    ("edit_interval", 0.01, FES, "must be from 0.2 to 10"),
    ("edit_interval", 0, F, "must be from 0.2 to 10"),
    ("edit_interval", 3600, FES, "must be from 0.2 to 10"),
    ("edit_interval", "-inf", E, "must be a finite number"),
    # strings
    ("system_prompt", "x" * 100_001, F, "must be at most 100000 characters"),
    ("model", "a\x00b.gguf", F + E, "must not contain NUL characters"),
    ("ignore_prefix", " !", FES, "must not start with a space or line break"),
    ("ignore_prefix", "\n!", F, "must not start with a space or line break"),
    ("ignore_prefix", "!" * 101, F, "must be at most 100 characters"),
    # lists of strings
    ("stop", ["", "x"], F, "must not hold an empty string"),
    ("stop", '["", "x"]', E + S, "must not hold an empty string"),
    ("stop", ["x"] * 33, F, "must hold at most 32 strings"),
    ("stop", [1], F, "expected a list of strings"),
    ("stop", ["a\x00"], F, "must not contain NUL characters"),
    # booleans
    ("allow_bots", "maybe", FES, "expected true or false"),
    ("allow_bots", 1, F, "expected true or false"),
    ("sync_commands", [True], F, "expected true or false"),
    # access lists: ids, and only whitelist/blacklist in a table
    ("users", ["alice"], F, "'alice' is not a numeric id"),
    ("users", "alice, 2", E + S, "'alice' is not a numeric id"),
    ("users", [0], F, "ids are positive integers"),
    ("users", [-5], F, "ids are positive integers"),
    ("users", [2**64], F, f"{2**64} is not a Discord id"),
    ("users", [1.5], F, "ids must be ints or numeric strings"),
    ("users", 5, F, "expected a list of ids or a whitelist/blacklist table"),
    ("users", True, F, "expected a list of ids or a whitelist/blacklist table"),
    ("users", {"whitelist": 5}, F, "expected a list, set or tuple of ids"),
    ("roles", {"blacklst": [1]}, F, "unknown keys ['blacklst']; use 'whitelist' and/or"),
    ("roles", '{"blacklst": [1]}', E + S, "unknown keys ['blacklst']"),
    ("admins", {"whitelist": ["x1"]}, F, "'x1' is not a numeric id"),
    ("channels", "[1, 2", E + S, "not valid JSON"),
    ("channels", {"blacklist": [[1]]}, F, "ids must be ints or numeric strings"),
    # shapes: a table or a list where a scalar is expected, and the reverse
    ("temperature", {"a": 1}, F, "expected a number"),
    ("temperature", [0.5], F, "expected a number"),
    ("max_new_tokens", {"a": 1}, F, "expected a whole number"),
    ("backend", ["llamacpp"], F, "expected a string"),
    ("model", {"path": "x"}, F, "expected a string"),
    ("stop", {"a": "b"}, F, "expected a list of strings"),
    ("stop", 5, F, "expected a list of strings"),
    # a host to serve on: an IP address or a host name, nothing the bind would fail on
    ("metrics_host", "localhost:9090", FES, "must be an IP address or host name"),
    ("metrics_host", "http://0.0.0.0", F, "must be an IP address or host name"),
    ("metrics_host", "[::1]", FES, "must be an IP address or host name"),
    ("metrics_host", "{}", F, "must be an IP address or host name"),
    ("metrics_host", "\u200b", F, "must be an IP address or host name"),
    ("metrics_host", "256.1.1.1", F, "must be an IP address or host name"),
    ("metrics_host", "-bad.example", F, "must be an IP address or host name"),
    ("metrics_host", "a" * 64 + ".example", F, "must be an IP address or host name"),
]


@pytest.mark.parametrize(
    ("source", "name", "value", "reason"),
    [(source, *rule[:2], rule[3]) for rule in RULES for source in rule[2]],
    ids=lambda v: repr(v)[:40] if not isinstance(v, str) or len(v) > 40 else v,
)
def test_each_rule_is_enforced_at_load(
    source: str, name: str, value: Any, reason: str, tmp_path: Path
) -> None:
    message, prefix = refusal(source, name, value if source == "file" else str(value), tmp_path)
    assert message.startswith(prefix), message
    assert reason in message
    assert ", got " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("parallel", 64),
        ("max_new_tokens", 8192),
        ("seed", -1),
        ("seed", 0),
        ("seed", 2**32 - 2),
        ("temperature", 0),
        ("temperature", 2),
        ("top_p", 1),
        ("repeat_penalty", 2),
        ("context_limit", 1000),
        ("context_chars", 1_000_000),
        ("stall_timeout", 1),
        ("queue_timeout", 86400),
        ("edit_interval", 0.2),
        ("edit_interval", 10),
        ("ignore_prefix", ""),
        ("ignore_prefix", "! "),
        ("stop", ["\n", "User:"]),
        ("users", [2**64 - 1]),
        ("users", []),
        ("roles", {"whitelist": []}),
        ("log_level", "debug"),
        ("base_url", "https://x.ai/v1"),
        ("system_prompt", ""),
        ("metrics_host", "0.0.0.0"),
        ("metrics_host", "::"),
        ("metrics_host", "::1"),
        ("metrics_host", "localhost"),
        ("metrics_host", "metrics-1.example.com"),
    ],
)
def test_the_edges_of_each_range_are_accepted(name: str, value: Any, tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text(f"{name} = {toml_value(value)}\n", encoding="utf-8")
    loaded = getattr(Settings.load(config, environ={}), name)
    assert loaded == (None if value == [] else value)


def test_an_empty_ignore_prefix_ignores_no_message() -> None:
    from genbot.wake import is_ignored

    prefix = Settings.load(environ={"GENBOT_IGNORE_PREFIX": ""}).ignore_prefix
    assert prefix == ""
    assert not is_ignored("!hello", prefix) and not is_ignored("", prefix)


# -- the file itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"temperature = 0.5\n\xff\xfe\n", "not UTF-8 text (byte 0xff at offset 18)"),
        ("temperature = 0.5 # caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9"),
        (b"temperature = \n", "not valid TOML"),
        (b"genbot = 5\n", "'genbot' must be a [genbot] table of settings, got 5"),
        (b"genbot = [1]\n", "'genbot' must be a [genbot] table of settings"),
        (b'backend = "openai"\n[genbot]\nmodel = "x"\n', "top-level key 'backend' beside the"),
        (b"[other]\nx = 1\n[genbot]\nseed = 1\n", "top-level key 'other' beside the [genbot]"),
        (b"[genbot]\ntemprature = 1\n", "unknown setting 'temprature' (did you mean"),
        (b"[genbot]\n[genbot.extra]\nx = 1\n", "unknown setting 'extra'"),
        (b"[other]\nx = 1\n", "unknown setting 'other'"),
        (b"seed = 1\n[genbot.users]\nblacklist = [1]\n", "top-level key 'seed' beside"),
        (b"[genbot.users]\nblacklst = [1]\n", "setting 'users': unknown keys ['blacklst']"),
        (b"max_new_tokens = 5\nmax-new-tokens = 6\n", "setting 'max_new_tokens' is given twice"),
    ],
)
def test_a_misshapen_file_is_refused_in_one_line(
    content: bytes, reason: str, tmp_path: Path
) -> None:
    config = tmp_path / "genbot.toml"
    config.write_bytes(content)
    with pytest.raises(SettingsError) as error:
        Settings.load(config, environ={})
    message = str(error.value)
    assert message.startswith(f"{config}: "), message
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize("content", [b"", b"\n# nothing set\n", b"[genbot]\n"])
def test_an_empty_file_gives_the_defaults(content: bytes, tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_bytes(content)
    assert Settings.load(config, environ={}) == Settings()


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_bytes('\ufeffignore_prefix = "\u00a7"\n'.encode())
    assert Settings.load(config, environ={}).ignore_prefix == "\u00a7"


def test_a_directory_or_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"is a directory, not a config file$"):
        Settings.load(tmp_path, environ={})
    with pytest.raises(SettingsError, match=r"nope\.toml: no such config file$"):
        Settings.load(tmp_path / "nope.toml", environ={})


# -- the environment ---------------------------------------------------------------------------


def test_an_unknown_genbot_variable_is_refused() -> None:
    with pytest.raises(SettingsError) as error:
        Settings.load(environ={"GENBOT_TEMPRATURE": "0.5"})
    assert str(error.value) == (
        "environment variable GENBOT_TEMPRATURE: not a genbot setting "
        "(did you mean GENBOT_TEMPERATURE?)"
    )
    # the openai backend's key is not a setting, and other variables are not ours
    loaded = Settings.load(environ={"GENBOT_API_KEY": "k", "GENBOTX": "1", "HOME": "/"})
    assert loaded == Settings()


def test_access_lists_from_the_environment() -> None:
    settings = Settings.load(environ={"GENBOT_USERS": "1, 2", "GENBOT_ROLES": '{"blacklist": [3]}'})
    assert settings.users == ["1", "2"]
    assert settings.roles == {"blacklist": [3]}
    # an empty variable is an empty list: everyone (the documented default), not an error
    assert Settings.load(environ={"GENBOT_USERS": "", "GENBOT_ADMINS": " "}).users is None


# -- checks that need the backend (and the disk) -----------------------------------------------


def where(source: str, tmp_path: Path, values: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Keyword arguments of Settings.load that give ``values`` from ``source``, and the name
    the error must give for the setting ``model``."""
    if source == "file":
        config = tmp_path / "genbot.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        return {"path": config, "environ": {}}, str(config)
    if source == "env":
        environ = {f"GENBOT_{k.upper()}": v for k, v in values.items()}
        return {"environ": environ}, "environment variable GENBOT_MODEL"
    return {"environ": {}, "overrides": values}, "--set model"


@pytest.mark.parametrize("source", ["file", "env", "set"])
def test_a_llamacpp_model_must_be_a_gguf_file(source: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    zip_file = tmp_path / "model.gguf"
    zip_file.write_bytes(b"PK\x03\x04 not a model")
    folder = tmp_path / "models"
    folder.mkdir()
    for path, reason in [
        (missing, "no such file"),
        (zip_file, "not a GGUF file (it does not start with 'GGUF')"),
        (folder, "not a file"),
    ]:
        kwargs, name = where(source, tmp_path, {"backend": "llamacpp", "model": str(path)})
        with pytest.raises(SettingsError) as error:
            Settings.load(**kwargs)
        assert str(error.value).startswith(f"{name}: setting 'model': {reason}")
        assert str(error.value).endswith(f", got {str(path)!r}")
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")  # the magic; llama.cpp itself judges the rest
    kwargs, _ = where(source, tmp_path, {"backend": "llamacpp", "model": str(gguf)})
    assert Settings.load(**kwargs).model == str(gguf)


def test_the_model_path_is_checked_only_for_llamacpp(tmp_path: Path) -> None:
    loaded = Settings.load(environ={"GENBOT_BACKEND": "openai", "GENBOT_MODEL": "gpt-4o-mini"})
    assert loaded.model == "gpt-4o-mini"
    # the check runs on the merged settings: a later source may switch the backend
    with pytest.raises(SettingsError, match="--set model: setting 'model': no such file"):
        Settings.load(
            environ={"GENBOT_BACKEND": "openai"},
            overrides={"backend": "llamacpp", "model": str(tmp_path / "x.gguf")},
        )


#: The transformers checks come after the one that its package is installed.
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)


@needs_transformers
@pytest.mark.parametrize("source", ["file", "env", "set"])
def test_transformers_needs_a_model(source: str, tmp_path: Path) -> None:
    kwargs, _ = where(source, tmp_path, {"backend": "transformers"})
    with pytest.raises(SettingsError) as error:
        Settings.load(**kwargs)
    backend_source = {
        "file": str(kwargs.get("path")),
        "env": "environment variable GENBOT_BACKEND",
        "set": "--set backend",
    }[source]
    assert str(error.value).startswith(
        f"{backend_source}: setting 'model': the transformers backend needs a model"
    )


@needs_transformers
@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("./models/not/there", "neither a local model folder nor a Hugging Face name"),
        ("a/b/c", "neither a local model folder nor a Hugging Face name"),
        ("owner/..", "neither a local model folder nor a Hugging Face name"),
        ("FILE", "a local transformers model is a folder"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", None),
        ("DIR", None),
    ],
)
def test_a_transformers_model_is_a_folder_or_a_hub_name(
    model: str, reason: str | None, tmp_path: Path
) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    model = model.replace("FILE", str(tmp_path / "weights.bin")).replace("DIR", str(tmp_path))
    overrides = {"backend": "transformers", "model": model}
    if reason is None:
        assert Settings.load(environ={}, overrides=overrides).model == model
        return
    with pytest.raises(SettingsError, match=rf"^--set model: setting 'model': {reason}"):
        Settings.load(environ={}, overrides=overrides)


def test_a_backend_whose_package_is_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    packages = dict(settings_module.BACKEND_PACKAGES)
    packages["openai"] = (("genbot_no_such_package",), "pip install 'genbot[openai]'")
    monkeypatch.setattr(settings_module, "BACKEND_PACKAGES", packages)
    with pytest.raises(SettingsError) as error:
        Settings.load(environ={"GENBOT_BACKEND": "openai"})
    assert str(error.value) == (
        "environment variable GENBOT_BACKEND: setting 'backend': needs the package "
        "genbot_no_such_package, which is not installed: pip install 'genbot[openai]', "
        "got 'openai'"
    )


# -- whatever the value: a loaded setting or one line naming it ---------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
NUMBERISH = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "", " ", "0x10", "1_000", "true"]),
)


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(Settings.names()), raw=st.one_of(TEXT, NUMBERISH))
def test_any_environment_value_loads_or_is_refused_in_one_line(name: str, raw: str) -> None:
    if name == "backend":  # the other backends need a model; see the tests above
        raw = raw if raw != "transformers" else "openai"
    variable = f"GENBOT_{name.upper()}"
    try:
        loaded = Settings.load(environ={variable: raw})
    except SettingsError as error:
        message = str(error)
        assert message.startswith(f"environment variable {variable}: setting {name!r}: ")
        assert "\n" not in message
        return
    value = getattr(loaded, name)
    if isinstance(value, float):
        assert math.isfinite(value)
    # a value that loads passes its own check when loaded again
    assert Settings().updated({name: value}, "again") is not None


def test_readme_table_is_generated_from_the_settings() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, "run `genbot settings --markdown` and paste it in README"


def test_the_install_scripts_variables_are_not_settings() -> None:
    """scripts/install reads GENBOT_PYTHON, GENBOT_VENV and GENBOT_TORCH_VERSION: exported,
    they must not stop genbot from starting."""
    environ = {
        "GENBOT_PYTHON": "python3.10",
        "GENBOT_VENV": ".venv-3.10",
        "GENBOT_TORCH_VERSION": "2.13.0",
    }
    assert Settings.load(environ=environ) == Settings.load(environ={})
