"""Lazy public names for a package: its ``__getattr__`` imports a name's module on first use
(PEP 562), so that importing the package pays only for what is used."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

_log = logging.getLogger(__name__)


def lazy_getattr(
    package: str, lazy: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for `package`: a name of `lazy` is imported from the module it
    maps to and kept in `namespace` (the package's ``globals()``), so the next look-up finds it.

    Parameters
    ----------
    package
        The package's name, for the error.
    lazy
        Each lazy name and the module that defines it.
    namespace
        The package's ``globals()``.

    Raises
    ------
    AttributeError
        (From the returned function) for a name that is not in `lazy`.
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


def lazy_dir(namespace: dict[str, Any], public: list[str]) -> Callable[[], list[str]]:
    """A module ``__dir__``: what `namespace` holds and the `public` names, lazy ones included,
    each once.

    Parameters
    ----------
    namespace
        The package's ``globals()``.
    public
        The package's ``__all__``.
    """

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return __dir__
