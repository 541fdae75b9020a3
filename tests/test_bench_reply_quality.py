"""bench/reply_quality.py without the model: its questions, its scoring, and that the defaults
in the settings are the candidate its table in the README chose (a default changed without the
bench, or a table left stale, fails here)."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from genbot.settings import DEFAULT_SYSTEM_PROMPT, Settings

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "bench" / "reply_quality.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    name = "bench_reply_quality"
    spec = importlib.util.spec_from_file_location(name, BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def readme_rows() -> dict[str, list[str]]:
    """The README's reply-quality table: candidate -> its cells."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("**Reply quality of the default**")
    table = readme[start:].split("\n\n")[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert rows[0][:4] == ["candidate", "system prompt", "temperature", "repeat penalty"]
    return {row[0].strip("*"): row for row in rows[2:]}


def test_at_least_40_plain_questions_each_with_keywords(bench: ModuleType) -> None:
    questions = bench.QUESTIONS
    assert len(questions) >= 40
    assert len({q.text for q in questions}) == len(questions)
    for question in questions:
        assert question.keywords and all(k.strip() for k in question.keywords), question


def test_a_keyword_matches_at_the_start_of_a_word(bench: ModuleType) -> None:
    assert bench.on_topic("I like programming.", ["program"])
    assert bench.on_topic("Au is gold.", ["au"])
    assert not bench.on_topic("The author is French.", ["au"])
    assert not bench.on_topic("I'm sorry for your loss.", ["paris", "capital"])
    assert bench.on_topic("Use s[::-1] to reverse it", ["[::-1]"])
    for keywords in ([], [""], ["x", " "]):
        with pytest.raises(ValueError):
            bench.on_topic("anything", keywords)


def test_the_defaults_are_the_candidate_the_benchmark_chose(bench: ModuleType) -> None:
    defaults = Settings()
    assert defaults.system_prompt == DEFAULT_SYSTEM_PROMPT
    chosen = (DEFAULT_SYSTEM_PROMPT, defaults.temperature, defaults.repeat_penalty)
    candidates = [(c.system_prompt, c.temperature, c.repeat_penalty) for c in bench.CANDIDATES]
    assert chosen in candidates, "the bench no longer measures the defaults"

    rows = readme_rows()
    prompt, temperature, penalty, on_topic = rows["default now"][1:5]
    assert prompt == f'"{DEFAULT_SYSTEM_PROMPT}"'
    assert (float(temperature), float(penalty)) == chosen[1:]

    def share(cell: str) -> int:
        found = re.fullmatch(r"\**(\d+) %\**", cell)
        assert found is not None, cell
        return int(found[1])

    assert all(share(on_topic) >= share(row[4]) for row in rows.values()), (
        "the README's table has a candidate more on topic than the default"
    )
