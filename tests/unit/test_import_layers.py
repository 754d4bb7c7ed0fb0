"""The import contracts of pyproject.toml (``[tool.importlinter]``): the tree keeps them, and they bite.

``lint-imports`` (import-linter) runs as a subprocess, as ``make test`` runs it. To show that a broken
contract fails the command, the packages are copied into a temporary folder, one deliberate violation
is appended to the copy, and ``lint-imports`` runs there with that folder first on the import path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOT_PACKAGES: list[str] = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["root_packages"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages found first in ``tree`` (no cache: the copies are new files)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "200"}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def copied_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for package in ROOT_PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(PYPROJECT, tree / "pyproject.toml")
    return tree


def test_every_root_package_is_a_layer() -> None:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    assert named == set(ROOT_PACKAGES)
    assert layers[0] == "streamrec" and layers[-1] == "schemas"  # the CLI on top, the contracts at the bottom


def test_the_tree_keeps_every_import_contract() -> None:
    done = subprocess.run([str(LINT_IMPORTS)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize(
    ("module", "line", "contract", "report"),
    [
        ("serving/__init__.py", "import streams.worker", "serving never imports streams",
         "serving -> streams.worker"),
        ("models/__init__.py", "import online_state", "models imports only schemas and foundation",
         "models -> online_state"),
        ("schemas/__init__.py", "import foundation.settings", "Layers:", "schemas -> foundation.settings"),
        ("tools/bench/spec.py", "import tools.bench.runner", "No import cycles between sibling",
         "No cycles are allowed in tools.bench."),
    ],
)
def test_a_deliberate_violation_fails_lint_imports(copied_tree: Path, module: str, line: str, contract: str,
                                                   report: str) -> None:
    path = copied_tree / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # a deliberate violation\n")
    try:
        done = lint_imports(copied_tree)
    finally:
        path.write_text(original)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    # A contract with ignored imports reports "BROKEN (2 ignored imports)".
    broken = [row for row in out.splitlines() if re.search(r" BROKEN( \(\d+ ignored imports?\))?$", row)]
    assert any(row.startswith(contract) for row in broken), out[-3000:]
    assert report in out, out[-3000:]
