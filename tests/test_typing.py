"""What a user's type checker sees of genbot: mypy --strict on tests/typing/user_bot.py.

The sample marks each line where mypy must report an error (a trailing comment "E: code") and
each ``reveal_type`` with the type it must show ("R: type"); every other error fails the test.
It checks that ``genbot.Genbot`` is a class (not ``Any``), that a gatekept method is typed on
the instance (its arguments are checked and it returns a ``GateHandle``), that
``self.attend.force(channel)`` is the typed way to force, and that module-level gatekept
functions are typed too. mypy follows the imports into ``src/`` silently: errors inside genbot
itself are the project's mypy run's business, not this test's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "typing" / "user_bot.py"
MARK = re.compile(r"#\s*(E|R):\s*(.+?)\s*(?:#.*)?$")
LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<kind>error|note): (?P<text>.*)$")


def _expected() -> tuple[set[tuple[int, str]], dict[int, str]]:
    errors: set[tuple[int, str]] = set()
    reveals: dict[int, str] = {}
    for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1):
        mark = MARK.search(line)
        if mark is None:
            continue
        if line.lstrip().startswith("#"):  # a comment alone on its line: about the next one
            number += 1
        if mark[1] == "E":
            errors.add((number, mark[2]))
        else:
            reveals[number] = mark[2]
    return errors, reveals


def _run_mypy(monkeypatch: pytest.MonkeyPatch) -> list[re.Match[str]]:
    # The genbot of this checkout (src/), whatever the environment has installed.
    monkeypatch.setenv("MYPYPATH", str(ROOT / "src"))
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "user-sample"),
            "--follow-imports=silent",
            "--no-error-summary",
            "--show-error-codes",
            "--hide-error-context",
            "--no-pretty",
            "--config-file=",
            "--python-version=3.10",
            str(SAMPLE),
        ]
    )
    assert status in (0, 1), f"mypy crashed:\n{stdout}\n{stderr}"
    found = [m for m in map(LINE.match, stdout.splitlines()) if m is not None]
    others = [m[0] for m in found if Path(m["file"]).name != SAMPLE.name]
    assert not others, "mypy reported outside the sample:\n" + "\n".join(others)
    return found


# mypy follows the imports into discord.py, aiohttp and the rest: with a cold cache on a busy
# machine that took more than the suite's 120 s.
@pytest.mark.timeout(600)
def test_a_users_bot_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    expected_errors, expected_reveals = _expected()
    found = _run_mypy(monkeypatch)
    errors = set()
    for m in found:
        if m["kind"] == "error":
            code = re.search(r"\[([a-z-]+)\]$", m["text"])
            errors.add((int(m["line"]), code[1] if code else m["text"]))
    reveals = {
        int(m["line"]): re.sub(r'^Revealed type is "(.*)"$', r"\1", m["text"])
        for m in found
        if m["kind"] == "note" and m["text"].startswith("Revealed type is")
    }
    assert sorted(errors - expected_errors) == [], "unexpected errors"
    assert sorted(expected_errors - errors) == [], "errors mypy did not report"
    assert reveals == expected_reveals


def test_the_type_checking_imports_keep_the_package_lazy_at_run_time() -> None:
    # Type checkers see genbot.Genbot and the backends through TYPE_CHECKING imports; at run
    # time a streamer's worker that imports genbot (or genbot.models) pays for none of them.
    code = (
        "import sys, genbot, genbot.models\n"
        "assert callable(genbot.gatekeep)\n"
        "heavy = ('discord', 'torch', 'transformers', 'openai', 'xllamacpp')\n"
        "loaded = [name for name in heavy if name in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert genbot.Genbot.__module__ == 'genbot.bot' and 'discord' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
