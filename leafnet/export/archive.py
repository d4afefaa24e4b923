"""TorchServe model archives (.mar): built with torch-model-archiver, unpacked and run in-process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import ts
import yaml
from ts.context import Context, RequestProcessor

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


class ArchivedHandler:
    """The handler of an unpacked archive with TorchServe's own Context, as a worker sets it up (manifest,
    model-config.yaml, batch size), minus the frontend and its IPC: for tests and in-process references."""

    def __init__(
        self, model_dir: Path, model_name: str | None = None, metrics=None, whole_machine: bool = False
    ) -> None:
        """whole_machine: size the handler as the only worker (all cores to its intra-op threads), whatever
        the archive's worker count, for a reference that does not handicap in-process inference."""
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        model_config = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
        self.workers = int(model_config.get("maxWorkers", 1) or 1)  # as the archive asks a server for
        if whole_machine:
            model_config = {**model_config, "minWorkers": 1, "maxWorkers": 1}
        self.batch_size = int(model_config.get("batchSize", 1))
        self.version = manifest["model"].get("modelVersion", "")
        sys.path.insert(0, str(model_dir))  # the handler imports image_io from beside itself, as in a worker
        try:
            handler_file = model_dir / manifest["model"]["handler"]
            spec = importlib.util.spec_from_file_location(f"archived_{handler_file.stem}", handler_file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(model_dir))
        self.context = Context(
            model_name or manifest["model"]["modelName"], str(model_dir), manifest, self.batch_size, None,
            ts.__version__, True, metrics, model_config,
        )  # fmt: skip
        self.handler = module.LeafnetHandler()
        self.handler.initialize(self.context)

    def __call__(self, items: list[dict], headers: list[dict] | None = None) -> list:
        """One batch as a worker hands it over: request headers per item, fresh response statuses."""
        self.context.request_processor = [RequestProcessor(h) for h in headers or [{} for _ in items]]
        return self.handler.handle(items, self.context)
