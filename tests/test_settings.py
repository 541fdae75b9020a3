"""Settings: one dataclass is the config file, the environment and the README table."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    config.write_text("[genbot]\ncontext_limit = 4\n")
    assert Settings.load(config, environ={}).context_limit == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"temperature": "hot"}, "'temperature': expected a number"),
        ({"temprature": 1}, "unknown setting 'temprature' (did you mean 'temperature'?)"),
        ({"top_p": 2}, "'top_p': must be in (0, 1]"),
        ({"backend": "gpt"}, "'backend': must be one of llamacpp, transformers, openai"),
        ({"max_new_tokens": 1.5}, "'max_new_tokens': expected a whole number"),
        ({"allow_bots": "maybe"}, "'allow_bots': expected true or false"),
        ({"users": ["alice"]}, "'users': expected a list of ids"),
        ({"roles": {"greylist": [1]}}, "'roles': expected a list of ids"),
        ({"log_level": "loud"}, "'log_level': must be one of DEBUG, INFO, WARNING"),
    ],
)
def test_bad_values_name_the_field_and_source(values: dict, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings().updated(values, "genbot.toml")
    assert "genbot.toml" in str(error.value)
    assert message in str(error.value)


def test_bad_environment_variable_is_named() -> None:
    with pytest.raises(SettingsError, match=r"GENBOT_CONTEXT_LIMIT.*must be greater than 0"):
        Settings.load(environ={"GENBOT_CONTEXT_LIMIT": "0"})


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text("temperature = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        Settings.load(config, environ={})


def test_access_lists_from_the_environment() -> None:
    settings = Settings.load(environ={"GENBOT_USERS": "1, 2", "GENBOT_ROLES": '{"blacklist": [3]}'})
    assert settings.users == ["1", "2"]
    assert settings.roles == {"blacklist": [3]}
    # an empty variable is an empty list: everyone (the documented default), not an error
    assert Settings.load(environ={"GENBOT_USERS": "", "GENBOT_ADMINS": " "}).users is None


def test_readme_table_is_generated_from_the_settings() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme, "run `genbot settings --markdown` and paste it in README"
