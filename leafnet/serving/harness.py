"""An unpacked archive's handler run in this process with TorchServe's own Context, as a worker sets it up
(manifest, model-config.yaml, batch size, metrics cache), minus the frontend and its IPC: for tests, the
serving benchmark's in-process reference and offline checks. Not imported by the handler itself."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import ts
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from .metrics import declaration


def own_metrics_cache() -> MetricsCacheYamlImpl:
    """A metrics cache declaring the handler's metrics, for a harness run without a server's metrics_config."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump({"model_metrics": declaration()}, file)
    try:
        cache = MetricsCacheYamlImpl(file.name)
        cache.initialize_cache()
    finally:
        os.unlink(file.name)
    return cache


class ArchivedHandler:
    """The handler of an unpacked archive with TorchServe's own Context, as a worker sets it up (manifest,
    model-config.yaml, batch size), minus the frontend and its IPC: for tests and in-process references."""

    def __init__(
        self,
        model_dir: Path,
        model_name: str | None = None,
        metrics=None,
        whole_machine: bool = False,
        gpu: int | None = None,
    ) -> None:
        """whole_machine: size the handler as the only worker (all cores to its intra-op threads), whatever
        the archive's worker count, for a reference that does not handicap in-process inference. gpu: the
        GPU index TorchServe would assign this worker (None: a CPU worker, as on a machine without GPUs)."""
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        model_config = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
        self.workers = int(model_config.get("maxWorkers", 1) or 1)  # as the archive asks a server for
        if whole_machine:
            model_config = {**model_config, "minWorkers": 1, "maxWorkers": 1}
        self.batch_size = int(model_config.get("batchSize", 1))
        self.version = manifest["model"].get("modelVersion", "")
        # The entry point imports leafnet_serving from beside itself, as in a worker: this archive's copy, not
        # one an earlier harness loaded.
        for name in [m for m in sys.modules if m == "leafnet_serving" or m.startswith("leafnet_serving.")]:
            del sys.modules[name]
        sys.path.insert(0, str(model_dir))
        try:
            handler_file = model_dir / manifest["model"]["handler"]
            spec = importlib.util.spec_from_file_location(f"archived_{handler_file.stem}", handler_file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(model_dir))
        self.context = Context(
            model_name or manifest["model"]["modelName"], str(model_dir), manifest, self.batch_size, gpu,
            ts.__version__, True, metrics if metrics is not None else own_metrics_cache(), model_config,
        )  # fmt: skip
        self.context.metrics.model_name = self.context.model_name  # as the worker sets it on its cache
        self.handler = module.LeafnetHandler()
        self.handler.initialize(self.context)

    def __call__(self, items: list[dict], headers: list[dict] | None = None) -> list:
        """One batch as a worker hands it over: request headers per item, fresh response statuses."""
        self.context.request_processor = [RequestProcessor(h) for h in headers or [{} for _ in items]]
        # request ids per batch position, as TorchServe's Service.predict sets them on the context and the cache
        request_ids = {position: f"harness-{position}" for position in range(len(items))}
        self.context.request_ids = self.context.metrics.request_ids = request_ids
        return self.handler.handle(items, self.context)
