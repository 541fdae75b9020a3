"""The version of genbot, written in this one place: pyproject.toml reads it from here
(setuptools' dynamic version) and ``genbot.__version__`` re-exports it."""

import logging

__all__ = ["__version__"]

_log = logging.getLogger(__name__)

__version__ = "0.1.0"
