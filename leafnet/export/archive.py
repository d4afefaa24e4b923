"""TorchServe model archives (.mar): built with torch-model-archiver and unpacked as a worker does
(leafnet.serving.harness runs an unpacked one in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
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
    """Packs `export_dir/<name>.mar`; extra files land beside the model in the archive's root, and so do the
    entries of an extra folder (a package folder inside it stays a folder)."""
    for path in (model_file, handler, model_config, *extra_files):
        if not path.exists():
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
    # The archiver stages the files in <temp dir>/<model name> and deletes that folder afterwards, so two
    # archives of one name packed at once (two exports, or a test run in parallel) would collide there:
    # each run gets a temp dir of its own.
    with tempfile.TemporaryDirectory(prefix="leafnet-archiver-") as private_tmp:
        environment = {**os.environ, "TMPDIR": private_tmp, "TEMP": private_tmp, "TMP": private_tmp}
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    archive = export_dir / f"{name}.mar"
    if result.returncode != 0 or not archive.is_file():
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise LeafnetError(f"torch-model-archiver failed for {name}: {lines[-1] if lines else 'no output'}")
    return archive


def unpack_archive(archive: Path, into: Path) -> dict:
    """Extracts a .mar as TorchServe does for a worker; returns its manifest."""
    if not archive.is_file():
        raise LeafnetError(f"archive {archive} not found: run scripts/export.py, or pass archive=<file.mar>")
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
        return json.loads((into / "MAR-INF" / "MANIFEST.json").read_text())
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as error:
        raise LeafnetError(f"{archive} is not a TorchServe archive: {error}") from None
