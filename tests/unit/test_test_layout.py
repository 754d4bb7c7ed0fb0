"""The test folders have no __init__.py, so pytest imports test modules by basename: two files with
one name (unit and integration) break collection. Caught here with a clear message instead."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_folders() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, n in names.items() if n > 1], {n: c for n, c in names.items() if c > 1}
