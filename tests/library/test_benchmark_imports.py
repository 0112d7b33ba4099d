"""The benchmarks import what the library has: their imports sit inside functions (so that `--help`
is instant), where a renamed function would only fail when a benchmark is run."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def _project_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from karaoke... import name` / `from pipelines... import name` in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("karaoke", "pipelines"):
            found.extend((node.module, alias.name) for alias in node.names)
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_name_a_benchmark_imports_exists(path):
    missing = []
    for module, name in _project_imports(path):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports names the project does not have: {missing}"
