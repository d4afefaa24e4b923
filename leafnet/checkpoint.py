"""Checkpoints: atomic save, validated load, and what resume needs to continue exactly.

A checkpoint is self-sufficient downstream: model name, class names and the eval preprocessing spec
travel with the weights, so evaluate and export need nothing but the file.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from leafnet import __version__
from leafnet.errors import LeafnetError
from leafnet.fsutil import atomic_write_bytes

FORMAT = "leafnet-checkpoint"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    return {"leafnet": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__)}


def rng_state() -> dict[str, Any]:
    """Generator states as tensors and plain lists, so checkpoints load with weights_only=True."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "gauss": [has_gauss, gauss]},
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy_state["pos"], *numpy_state["gauss"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_bytes(payload: dict[str, Any]) -> bytes:
    """A checkpoint file's bytes: the payload with the format header."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(), **payload}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialises in memory, then writes through a temp file and a rename: never a torn file."""
    atomic_write_bytes(path, checkpoint_bytes(payload))


def top_checkpoint_name(epoch: int, top1: float) -> str:
    """The file name of a kept top checkpoint (`checkpoint.keep_top`), under <run>/checkpoints/top/;
    `epoch` is the index metrics.csv and the checkpoint's "epoch" use."""
    return f"epoch{epoch:03d}_top1_{top1:.4f}.pt"


def rank_top(kept: list[dict], epoch: int, top1: float, keep: int) -> tuple[list[dict], dict | None, list[dict]]:
    """The `keep` best of `kept` and this epoch by val top-1 (on a tie the earlier epoch stays, as for
    best.pt): the new list (best first), this epoch's entry if it made it (else None), and the entries
    it pushed out. An entry is {"epoch", "top1", "file"}."""
    entry = {"epoch": epoch, "top1": top1, "file": top_checkpoint_name(epoch, top1)}
    ranked = sorted([*kept, entry], key=lambda e: (-e["top1"], e["epoch"]))
    kept = ranked[:keep]
    return kept, entry if entry in kept else None, [e for e in ranked[keep:] if e is not entry]


def _load_failure(error: Exception) -> str:
    """One readable line out of torch.load's multi-paragraph errors."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return f"it holds a Python object ({unsupported.group(1)}) that a safe (weights_only) load refuses"
    if "Weights only load failed" in text:
        return "not a torch checkpoint, or a damaged one"
    return text.splitlines()[0] if text else type(error).__name__


def safe_torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True (safe on files from elsewhere), failing with one line."""
    path = Path(path)
    if not path.is_file():
        raise LeafnetError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise LeafnetError(f"cannot read {what} {path}: {_load_failure(error)}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads and validates a leafnet checkpoint."""
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise LeafnetError(f"{path} is not a leafnet checkpoint")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise LeafnetError(
            f"{path} has checkpoint format {checkpoint.get('format_version')}, this leafnet "
            f"({__version__}) reads format {FORMAT_VERSION}"
        )
    return checkpoint
