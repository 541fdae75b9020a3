"""The lazy packages' ``dir()``: every public name once (``genbot._lazy``)."""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import pytest

import genbot
import genbot.models


@pytest.mark.parametrize("package", [genbot, genbot.models], ids=lambda p: p.__name__)
def test_dir_lists_each_name_once_and_every_public_one(package: ModuleType) -> None:
    names = dir(package)
    assert [name for name, n in Counter(names).items() if n > 1] == []
    assert set(package.__all__) <= set(names)
    assert names == sorted(names)
