"""The project's own files: one version, a changelog that names it, a licence, and a
repository that stands on its own (nothing points to files outside it)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import genbot
import genbot._version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def released_versions() -> list[str]:
    """The versions of CHANGELOG.md's release headings, newest first."""
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)


def test_pyproject_reads_the_version_from_genbot_version() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "genbot._version.__version__"}


def test_the_version_is_the_newest_release_of_the_changelog() -> None:
    assert released_versions(), "CHANGELOG.md has no release heading"
    assert genbot._version.__version__ == released_versions()[0]
    assert genbot.__version__ == genbot._version.__version__


def test_the_version_is_written_in_one_place() -> None:
    """No module but genbot/_version.py assigns ``__version__`` (the others import it)."""
    writers = []
    for path in sorted((ROOT / "src" / "genbot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                writers.append(path.relative_to(ROOT).as_posix())
    assert writers == ["src/genbot/_version.py"]


def test_the_licence_is_the_one_pyproject_declares() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n\nCopyright (c) 2026 genbot contributors\n")


# Paths and names of documents that live outside this repository (and this machine's paths).
OUTSIDE = re.compile(r"shared/|/work/|genbot-design|design doc\b(?!.*docs/design\.md)", re.I)
SKIP_DIRS = {"build", "dist", "__pycache__"}
DOT_DIRS = {".ci", ".github"}  # folders of the project whose names start with a dot
TEXT = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".sh", ""}


def test_no_file_points_outside_the_repository() -> None:
    offenders = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [
            d
            for d in dirs
            if (not d.startswith(".") or d in DOT_DIRS)
            and d not in SKIP_DIRS
            and not d.endswith(".egg-info")
        ]
        for name in files:
            path = Path(top, name)
            # .git: a worktree's pointer to its repository, not a file of the project
            if path.suffix not in TEXT or path == Path(__file__) or name == ".git":
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


# Run in a fresh interpreter: it imports every module (torch too, where installed).
_SHADOWS = """
import importlib, json, pkgutil, sys
import genbot
found = []
def walk(package):
    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "__main__":  # importing it runs the command
            continue
        name = f"{package.__name__}.{info.name}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] == "genbot":
                raise
            continue  # an optional backend whose package is not installed
        exported = info.name in getattr(package, "__all__", ())
        if getattr(package, info.name) is not module or exported:
            found.append(name)
        if info.ispkg:
            walk(module)
walk(genbot)
print(json.dumps(found))
"""


def test_no_name_a_package_binds_shadows_one_of_its_modules() -> None:
    """``import genbot.gatekeeping as g`` gives the module, in every package of genbot: no
    function, class or other value a package binds has the name of one of its modules (as
    ``genbot.gatekeep`` and ``genbot.streaming.streamer`` once did)."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", _SHADOWS],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


_BUILD_WHEEL = """
import sys
from setuptools import build_meta
print(build_meta.build_wheel(sys.argv[1]))
"""


def test_the_wheel_ships_py_typed_and_every_module(tmp_path: Path) -> None:
    """What ``pip install genbot`` gets: the ``py.typed`` marker (so that a user's type checker
    reads genbot's types) and every module of ``src/genbot``. Built offline with setuptools'
    own PEP 517 hooks, from a copy of the files the build reads."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_WHEEL, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = out / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "genbot/py.typed" in names
    modules = {
        path.relative_to(ROOT / "src").as_posix()
        for path in (ROOT / "src" / "genbot").rglob("*.py")
    }
    assert modules - names == set()
    assert wheel.name.startswith(f"genbot-{genbot._version.__version__}-")
