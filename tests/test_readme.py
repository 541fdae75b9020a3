"""The README's Python examples run as written (the bot, the testing snippet, the model one)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


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
