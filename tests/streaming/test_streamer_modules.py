"""The package's submodules are reachable as modules: no name the package exports shadows one."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types

import genbot.streaming


def test_no_package_name_shadows_a_submodule() -> None:
    names = [info.name for info in pkgutil.iter_modules(genbot.streaming.__path__)]
    assert len(names) >= 5
    for name in names:
        module = importlib.import_module(f"genbot.streaming.{name}")
        # `import genbot.streaming.<name> as m` binds this attribute of the package
        assert getattr(genbot.streaming, name) is module, name
        assert module is sys.modules[f"genbot.streaming.{name}"]
        assert isinstance(module, types.ModuleType)
    assert set(genbot.streaming.__all__).isdisjoint(names)
