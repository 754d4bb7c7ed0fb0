"""Load another folder's test module by path, to reuse its fixtures, cases and ground truths (the test folders are
not packages, so a plain import cannot reach them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_test_module(path: Path, name: str) -> ModuleType:
    """``path`` executed as module ``name`` (registered first: dataclasses look their module up while it runs)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
