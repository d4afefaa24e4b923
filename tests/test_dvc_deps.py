"""dvc.yaml's code dependencies are exactly the leafnet modules each stage's script imports: an edit to
any of them re-runs the stage, and an edit elsewhere (the drift report, say) re-runs nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# Code a stage ships without importing it: export packs the whole serving package into every archive.
SERVING = REPO / "leafnet" / "serving"
PACKED = {
    "export": {str(p.relative_to(REPO)) for p in [*SERVING.glob("*.py"), SERVING / "model-config.yaml"]}
    - {"leafnet/serving/supervisor.py"}
}  # runs beside TorchServe, not packed (leafnet/export/packaged.py)
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(dotted: str) -> Path | None:
    path = REPO / Path(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, not a module


def leafnet_closure(script: Path) -> set[str]:
    """The script and every leafnet module it imports, transitively, packages' __init__ included."""
    seen: set[Path] = set()
    pending = [script]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in (n for n in names if n.split(".")[0] == "leafnet"):
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):
                    found = module_file(".".join(parts[:depth]))
                    if found and found not in seen:
                        seen.add(found)
                        pending.append(found)
    return {str(path.relative_to(REPO)) for path in seen | {script}}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_dependencies_are_exactly_what_the_stage_imports(stage):
    command = STAGES[stage]["cmd"].split()
    script = REPO / next(word for word in command if word.startswith("scripts/"))
    declared = {dep for dep in STAGES[stage]["deps"] if dep.endswith(".py") or dep.startswith("leafnet")}
    expected = leafnet_closure(script) | PACKED.get(stage, set())
    assert sorted(expected - declared) == [], f"{stage}: imported but not a dependency"
    assert sorted(declared - expected) == [], f"{stage}: a dependency it does not import"


def test_the_import_walk_sees_through_packages():
    """The walk must follow `from leafnet.x import y` into x and its package: else the test above is blind."""
    closure = leafnet_closure(REPO / "scripts" / "export.py")
    assert {"leafnet/export/exporter.py", "leafnet/export/__init__.py", "leafnet/monitoring/reference.py"} <= closure
    assert "leafnet/monitoring/report.py" not in closure  # the drift report is not export's business
