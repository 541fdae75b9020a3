"""Profiles and places without Discord: the resolver's order of precedence, the config file's
tables checked at load (a bad value names the file and the key), prompt placeholders."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from genbot.commands import name_choices
from genbot.profiles import (
    DEFAULT,
    Choice,
    Place,
    Resolved,
    format_prompt,
    model_settings,
    profile_settings,
    prompt_problem,
    resolve,
)
from genbot.settings import PROFILE_FIELDS, Settings, SettingsError

NEEDS_TRANSFORMERS = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)

THREAD, CHANNEL, CATEGORY, SERVER = 4, 3, 2, 1
CHAIN = (THREAD, CHANNEL, CATEGORY, SERVER)
PROFILES: dict[str, dict[str, Any]] = {
    "pirate": {"model": "small", "temperature": 0.8},
    "scholar": {"max_new_tokens": 9},
}
MODELS = {"small": {"backend": "openai"}, "big": {"backend": "openai"}}


def who(places: dict[int, Choice], chosen: dict[int, Choice] | None = None) -> tuple[str, str]:
    found = resolve(CHAIN, places, chosen or {}, PROFILES, MODELS)
    return found.profile, found.model


@pytest.mark.parametrize(
    ("places", "expected"),
    [
        ({}, (DEFAULT, DEFAULT)),
        ({SERVER: Choice("scholar")}, ("scholar", DEFAULT)),
        ({SERVER: Choice("scholar"), CATEGORY: Choice("pirate")}, ("pirate", "small")),
        ({CATEGORY: Choice("pirate"), CHANNEL: Choice("scholar")}, ("scholar", DEFAULT)),
        ({CHANNEL: Choice("scholar"), THREAD: Choice("pirate")}, ("pirate", "small")),
        # a thread without a place of its own follows its channel
        ({CHANNEL: Choice("pirate")}, ("pirate", "small")),
        # the place's own model beats its profile's model
        ({CHANNEL: Choice("pirate", "big")}, ("pirate", "big")),
        # a profile picked more specifically beats a model set for the whole server
        ({SERVER: Choice(model="big"), CHANNEL: Choice("pirate")}, ("pirate", "small")),
        # ... and a model set more specifically beats the profile's
        ({CHANNEL: Choice("pirate"), THREAD: Choice(model="big")}, ("pirate", "big")),
        ({SERVER: Choice(model="big"), CHANNEL: Choice("scholar")}, ("scholar", "big")),
        # names no longer defined are passed over
        ({CHANNEL: Choice("gone", "gone"), SERVER: Choice("scholar")}, ("scholar", DEFAULT)),
    ],
)
def test_the_most_specific_place_wins(places: dict[int, Choice], expected: tuple[str, str]) -> None:
    assert who(places) == expected


def test_a_choice_made_in_a_place_beats_the_config_there_and_above() -> None:
    config = {CHANNEL: Choice("pirate"), SERVER: Choice(model="small")}
    assert who(config, {CHANNEL: Choice(model="big")}) == ("pirate", "big")
    assert who(config, {CHANNEL: Choice("scholar")}) == ("scholar", "small")
    # a config place more specific than the choice still applies there
    assert who({THREAD: Choice("scholar")}, {CHANNEL: Choice("pirate")}) == ("scholar", DEFAULT)
    # a choice in the thread beats everything
    assert who({THREAD: Choice("scholar")}, {THREAD: Choice("pirate")}) == ("pirate", "small")


def test_the_resolver_says_where_each_was_decided() -> None:
    found = resolve(
        CHAIN, {CHANNEL: Choice("pirate")}, {THREAD: Choice(model="big")}, PROFILES, MODELS
    )
    assert found == Resolved("pirate", "big", ("config", CHANNEL), ("chosen", THREAD))
    found = resolve((9,), {}, {}, PROFILES, MODELS)  # a DM is its own chain
    assert found == Resolved()


def test_profile_and_model_settings_apply_over_the_top_level() -> None:
    top = Settings(
        temperature=0.1, parallel=8, models={"small": {"backend": "openai", "parallel": 2}}
    )
    top.profiles.update(PROFILES)
    pirate = profile_settings(top, "pirate")
    assert (pirate.temperature, pirate.max_new_tokens) == (0.8, 256)
    assert profile_settings(top, DEFAULT) == top
    small = model_settings(pirate, "small")
    assert (small.backend, small.parallel, small.model) == ("openai", 2, "")
    assert small.temperature == 0.8  # the model brings no sampling settings
    assert model_settings(top, DEFAULT).parallel == 8


# -- placeholders --------------------------------------------------------------------------------


def test_placeholders_are_filled_in_and_double_braces_are_literal() -> None:
    values = {"date": "2026-11-27", "time": "10:00 UTC", "server": "S", "channel": "c", "bot": "B"}
    template = "{bot} on {server} #{channel}, {date} {time}; {{json}}"
    assert prompt_problem(template) is None
    assert format_prompt(template, values) == "B on S #c, 2026-11-27 10:00 UTC; {json}"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Hi {user}", "unknown placeholder {user}"),
        ("a { b", "stray brace"),
        ("a } b", "stray brace"),
        ("{date:%Y}", "takes no format"),
        ("{bot!r}", "takes no format"),
        ("{}", "unknown placeholder {}"),
    ],
)
def test_a_bad_placeholder_is_refused(template: str, problem: str) -> None:
    assert problem in (prompt_problem(template) or "")


def test_a_bad_top_level_system_prompt_is_refused_at_load() -> None:
    with pytest.raises(
        SettingsError, match=r"^--set system_prompt: setting 'system_prompt': .*\{user\}"
    ):
        Settings.load(environ={}, overrides={"system_prompt": "Hi {user}"})


# -- the config file's tables --------------------------------------------------------------------

GOOD = """
[models.small]
backend = "openai"
[profiles.pirate]
model = "small"
temperature = 0.8
[[places]]
id = 123456789012345678
profile = "pirate"
"""


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "bot.toml"
    path.write_text(text, encoding="utf-8")
    return Settings.load(path, environ={})


def test_the_tables_load(tmp_path: Path) -> None:
    settings = load(tmp_path, GOOD + '[[places]]\nid = "42"\nmodel = "default"\n')
    assert settings.models == {"small": {"backend": "openai"}}
    assert settings.profiles == {"pirate": {"model": "small", "temperature": 0.8}}
    assert settings.places == (Place(123456789012345678, "pirate"), Place(42, None, "default"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[models.small]\nparallel = 0",
            "setting 'models.small.parallel': must be from 1 to 64, got 0",
        ),
        ("[models.small]\nbackend = 'gpt'", "setting 'models.small.backend': must be one of"),
        ("[models.small]\ntemperature = 1", "'models.small': 'temperature' cannot be set here"),
        pytest.param(
            "[models.t]\nbackend = 'transformers'",
            "setting 'models.t.model': the transformers backend needs a model",
            marks=NEEDS_TRANSFORMERS,  # without it, the missing package is what is said
        ),
        (
            "[models.small]\nbackend = 'llamacpp'\nmodel = '/no/such.gguf'",
            "setting 'models.small.model': no such file",
        ),
        ("[models.default]\nbackend = 'openai'", "'models.default': 'default' is the top-level"),
        ("[models.'a b']\nbackend = 'openai'", "'models.a b': a name is 1 to 64"),
        ("models = 3", "'models' must be tables [models.NAME]"),
        ("[models]\nsmall = 3", "'models.small' must be a table"),
        (
            "[profiles.p]\ntemperature = 5",
            "setting 'profiles.p.temperature': must be from 0 to 2, got 5",
        ),
        ("[profiles.p]\nbackend = 'openai'", "'profiles.p': 'backend' cannot be set here"),
        ("[profiles.p]\nadmins = [1]", "'profiles.p': 'admins' cannot be set here"),
        ("[profiles.p]\nmodel = 'huge'", "setting 'profiles.p.model': no model named 'huge'"),
        (
            "[profiles.p]\nsystem_prompt = 'Hi {user}'",
            "setting 'profiles.p.system_prompt': has an unknown placeholder {user}",
        ),
        ("[profiles.p]\nstop = ['']", "setting 'profiles.p.stop': must not hold an empty"),
        ("[[places]]\nid = 5", "'places[0]': a place needs a profile or a model"),
        ("[[places]]\nid = 0\nmodel = 'default'", "setting 'places[0].id': must be a Discord id"),
        (
            "[[places]]\nid = 'general'\nmodel = 'default'",
            "setting 'places[0].id': must be a Discord id",
        ),
        (
            "[[places]]\nid = true\nmodel = 'default'",
            "setting 'places[0].id': must be a Discord id",
        ),
        ("[[places]]\nmodel = 'default'", "setting 'places[0].id': missing: a place needs the id"),
        (
            "[[places]]\nid = 5\nprofile = 'nope'",
            "setting 'places[0].profile': no profile named 'nope'",
        ),
        ("[[places]]\nid = 5\nmodel = 'nope'", "setting 'places[0].model': no model named 'nope'"),
        (
            "[[places]]\nid = 5\nmodel = 'default'\nname = 'x'",
            "'places[0]': 'name' cannot be set here",
        ),
        (
            "[[places]]\nid = 5\nmodel = 'default'\n[[places]]\nid = 5\nprofile = 'default'",
            "setting 'places[1].id': the place 5 is given twice",
        ),
        ("places = {id = 5}", "'places' must be [[places]] tables"),
        ("places = [5]", "'places[0]' must be a table"),
    ],
)
def test_a_bad_table_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{tmp_path / 'bot.toml'}: ")
    assert message in line


def test_the_tables_are_not_settings_of_the_environment_or_the_command_line() -> None:
    with pytest.raises(SettingsError, match="not a genbot setting"):
        Settings.load(environ={"GENBOT_PROFILES": "{}"})
    with pytest.raises(SettingsError, match="'places' is a table of the config file"):
        Settings.load(environ={}, overrides={"places": "[]"})
    assert not {"models", "profiles", "places"} & set(Settings.names())


def test_every_profile_field_is_a_setting() -> None:
    assert set(PROFILE_FIELDS) <= set(Settings.names())


def test_the_example_configs_tables_load(tmp_path: Path) -> None:
    """examples/genbot.toml shows the tables commented out (it holds the defaults): uncommented,
    they load."""
    example = Path(__file__).parents[1] / "examples" / "genbot.toml"
    lines = example.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# [models."))
    tables = [re.sub(r"^# ?", "", line) for line in lines[start:]]
    settings = load(tmp_path, "\n".join(tables))
    assert set(settings.models) == {"small", "big"} and len(settings.places) == 2
    assert set(settings.profiles) == {"pirate", "helper"}


# -- autocomplete --------------------------------------------------------------------------------


def test_name_choices_offer_prefixes_first_then_the_rest_that_match() -> None:
    names = ["default", "small", "big", "bigger", "tiny-big"]
    assert name_choices(names, "") == names
    assert name_choices(names, "BI") == ["big", "bigger", "tiny-big"]
    assert name_choices(names, "zzz") == []
    assert len(name_choices([f"m{i}" for i in range(40)], "m")) == 25


def test_the_readme_example_config_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Profiles, places and personas") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    settings = load(tmp_path, block.group(1))
    assert settings.profiles["pirate"]["model"] == "small"
    assert [p.model for p in settings.places] == [None, "big"]


def test_the_tables_may_sit_beside_or_inside_a_genbot_table(tmp_path: Path) -> None:
    tables = (
        '[models.small]\nbackend = "openai"\n'
        '[profiles.pirate]\nmodel = "small"\n'
        '[[places]]\nid = 42\nprofile = "pirate"\n'
    )
    beside = load(tmp_path, "[genbot]\ntemperature = 0.5\n" + tables)
    nested = re.sub(r"^(\[+)", r"\1genbot.", tables, flags=re.M)
    inside = load(tmp_path, "[genbot]\ntemperature = 0.5\n" + nested)
    for settings in (beside, inside):
        assert settings.temperature == 0.5
        assert settings.models == {"small": {"backend": "openai"}}
        assert set(settings.profiles) == {"pirate"} and len(settings.places) == 1
    with pytest.raises(SettingsError, match="top-level key 'seed' beside the \\[genbot\\]"):
        load(tmp_path, "seed = 1\n[genbot]\n" + tables)
