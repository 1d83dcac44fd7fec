"""The suite's own layout: test directories are not packages, so pytest imports every
test module by its file name; two with the same name stop the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TEST_ROOT = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in TEST_ROOT.rglob("test_*.py"))
    assert not [name for name, n in names.items() if n > 1]
