"""``examples/genbot.toml`` documents every setting, set to its default with its meaning above it.

It must never go stale: a setting added to :class:`genbot.settings.Settings` fails here until it
is in the example, and a changed default until the example shows it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from genbot.settings import Settings, read_config

EXAMPLE = Path(__file__).parents[1] / "examples" / "genbot.toml"


def test_the_example_config_loads_and_holds_the_defaults() -> None:
    loaded = Settings.load(EXAMPLE, environ={})
    different = {
        f.name: getattr(loaded, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(loaded, f.name) != getattr(Settings(), f.name)
    }
    assert different == {}, "examples/genbot.toml must show each setting's default"


def test_the_example_config_shows_every_setting() -> None:
    shown = set(read_config(EXAMPLE))
    missing = [name for name in Settings.names() if name not in shown]
    assert missing == [], f"document these settings in examples/genbot.toml: {missing}"


def test_every_setting_in_the_example_config_has_its_meaning_above_it() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for name in Settings.names():
        where = [i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line)]
        assert where, f"{name} is not set in examples/genbot.toml"
        assert lines[where[0] - 1].startswith("# "), f"{name} has no comment above it"
