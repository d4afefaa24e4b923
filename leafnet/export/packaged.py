"""What export packs into every archive besides the model, found through the installed package
(importlib.resources), so export works from a wheel as from a checkout: TorchServe's entry point, the
model config, and the leafnet.serving package, which the archive carries as `leafnet_serving`."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

SERVING = Path(str(resources.files("leafnet.serving")))
ENTRY_POINT = SERVING / "leafnet_handler.py"  # handlers/leafnet_handler.py links to it
MODEL_CONFIG = SERVING / "model-config.yaml"
ARCHIVED_PACKAGE = "leafnet_serving"  # the name the entry point imports inside a worker
# Runs beside TorchServe (it starts it), never inside a worker: the image copies it, the archive does not.
SUPERVISOR = SERVING / "supervisor.py"


def copy_serving_package(into: Path) -> Path:
    """`into/leafnet_serving/`: the package's modules, without the entry point, the supervisor, config or
    bytecode."""
    target = into / ARCHIVED_PACKAGE
    target.mkdir(parents=True)
    for module in sorted(SERVING.glob("*.py")):
        if module.name not in (ENTRY_POINT.name, SUPERVISOR.name):
            shutil.copy2(module, target / module.name)
    return target
