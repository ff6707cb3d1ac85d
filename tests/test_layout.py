"""The house rules that can be checked mechanically: evaluation never reaches into training, and modules stay small
enough to read."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vpfb"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((SRC / "evaluation").glob("*.py")), ids=lambda p: p.name)
def test_evaluation_does_not_import_training(path):
    assert not [m for m in imported_modules(path) if m.startswith("vpfb.training")]


def test_the_import_check_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from vpfb.training import train\nimport vpfb.training.checkpoint\n")
    assert {"vpfb.training", "vpfb.training.train", "vpfb.training.checkpoint"} <= imported_modules(probe)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400
