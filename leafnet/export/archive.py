"""TorchServe model archives (.mar) built with torch-model-archiver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from leafnet.errors import LeafnetError


def build_archive(
    name: str,
    version: str,
    model_file: Path,
    handler: Path,
    extra_files: list[Path],
    model_config: Path,
    export_dir: Path,
) -> Path:
    """Packs `export_dir/<name>.mar`; extra files land beside the model in the archive's root."""
    for path in (model_file, handler, model_config, *extra_files):
        if not path.is_file():
            raise LeafnetError(f"cannot build {name}.mar: {path} not found")
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",  # the torch-model-archiver entry point, from this environment
        "--model-name",
        name,
        "--version",
        version,
        "--serialized-file",
        str(model_file),
        "--handler",
        str(handler),
        "--extra-files",
        ",".join(str(p) for p in extra_files),
        "--config-file",
        str(model_config),
        "--export-path",
        str(export_dir),
        "--force",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    archive = export_dir / f"{name}.mar"
    if result.returncode != 0 or not archive.is_file():
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise LeafnetError(f"torch-model-archiver failed for {name}: {lines[-1] if lines else 'no output'}")
    return archive
