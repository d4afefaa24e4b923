"""What offline prediction runs: an export directory's variant, a TorchServe archive's model, or a training
checkpoint's network, each with what a server of it would answer with: labels, preprocessing spec
(preprocess.json), model version and the `handler:` options of model-config.yaml.

An export directory and a checkpoint have no model-config.yaml of their own: they get the packaged one's,
which export would pack into their archive. An export directory holds several variants; `variant="auto"`
times them side by side here (`fastest_variant`) and keeps the fastest.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from leafnet.errors import LeafnetError
from leafnet.export import packaged
from leafnet.export.archive import unpack_archive
from leafnet.serving.calibration import CALIBRATION_FILE, Calibration
from leafnet.serving.runtime import Runtime, available_cpus

logger = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"  # what marks an export directory (leafnet/export/exporter.py MARKER)
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# variant="auto": untimed calls per variant (TorchScript's profiling executor optimises the graph on its
# first calls), then rounds of one timed call per variant while the budget lasts (fastest_variant).
WARMUP_CALLS = 2
MAX_ROUNDS = 3
CHOICE_BUDGET_S = 1.5


@dataclass
class LoadedModel:
    runtime: object  # Runtime (TorchScript, ONNX) or EagerRuntime (a checkpoint): logits(batch), threads, device
    labels: list[str]  # class names in index order
    spec: dict  # the preprocessing spec, as preprocess.json holds it
    version: str  # the answers' model_version
    options: dict  # model-config.yaml's `handler:` section (topk, max_image_pixels, ...)
    name: str  # what was loaded, for log lines
    variant: str | None = None  # an export directory's variant
    model_file: Path | None = None  # the model's file, when it stays on disk (an export directory's variant)
    # the threshold that makes an answer `unknown` (calibration.json); None: a checkpoint, or an export from
    # before calibration, whose answers say unknown: null
    calibration: Calibration | None = None


class EagerRuntime:
    """A checkpoint's network in torch eval mode behind Runtime's interface."""

    def __init__(self, model, threads: int, device: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device, self.threads = device, threads
        self.model = model.float().to(device).eval()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.model(inputs).float().cpu().numpy()

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, None]:
        """A checkpoint has no temperature nor threshold (export fits them): no out-of-distribution score."""
        return self.logits(batch), None


def load_model(
    model: str | Path, variant: str = "auto", threads: int = 0, device: str = "auto", batch_size: int = 32
) -> LoadedModel:
    """The model at `model` (an export directory, a .mar or a checkpoint), its runtime with `threads` intra-op
    threads (0: one per core this process may use). `batch_size`: what variant="auto" times."""
    path = Path(model)
    threads = threads or available_cpus()
    if not path.exists():
        raise LeafnetError(f"model {path} not found: pass an export directory, a .mar archive or a checkpoint .pt")
    if path.is_dir():
        return _from_export(path, variant, threads, device, batch_size)
    if variant != "auto":
        raise LeafnetError(f"variant={variant} picks a model of an export directory; {path} holds a single model")
    if path.suffix == ".mar":
        return _from_archive(path, threads, device)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return _from_checkpoint(path, threads, device)
    raise LeafnetError(f"cannot predict with {path}: expected an export directory, a .mar archive or a checkpoint .pt")


def _torch_device(device: str) -> str:
    """auto: the first GPU when torch sees one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise LeafnetError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LeafnetError(f"device={device} but torch sees no GPU; use device=cpu or auto")
    return device


def _runtime(model_file: Path, threads: int, device: str) -> Runtime:
    """A model file behind one call. Idle intra-op threads sleep (spinning off): the decoding threads share
    these cores, and spinning ones would take their time."""
    # ONNX runs on the CPU here, and so do dynamically quantized TorchScript models: their quantized
    # operators have no CUDA kernels.
    on_cpu = model_file.suffix == ".onnx" or ".dynq." in model_file.name
    torch_device = "cpu" if on_cpu else _torch_device(device)
    try:
        return Runtime(model_file, threads, torch_device, spinning=False)
    except Exception as error:  # a damaged file, or one written by a newer exporter
        raise LeafnetError(f"cannot load {model_file}: {_first_line(error)}") from None


def _served_options() -> dict:
    """The handler options an archive exported by this leafnet would carry (packaged model-config.yaml)."""
    return (yaml.safe_load(packaged.MODEL_CONFIG.read_text()) or {}).get("handler") or {}


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LeafnetError(f"{path} not found: {what}") from None
    except (OSError, ValueError) as error:
        raise LeafnetError(f"cannot read {path}: {error}") from None


def _from_export(path: Path, variant: str, threads: int, device: str, batch_size: int) -> LoadedModel:
    from leafnet.monitoring.reference import load_reference

    record = _read_json(path / EXPORT_RECORD, "not an export directory (scripts/export.py writes one)")
    try:
        variants = {name: path / facts["file"] for name, facts in record["variants"].items()}
        spec, version, num_classes = record["preprocess"], str(record["version"]), record["num_classes"]
    except (KeyError, TypeError, AttributeError) as error:
        raise LeafnetError(f"{path / EXPORT_RECORD} lacks {error}: re-export with this leafnet") from None
    withheld = record.get("withheld") or {}
    if variant in withheld:
        reasons = "; ".join(withheld[variant].get("reasons", []))
        raise LeafnetError(f"{path} has no {variant}: export withheld it ({reasons}); it has: {', '.join(variants)}")
    if variant != "auto" and variant not in variants:
        raise LeafnetError(f"unknown variant {variant!r} in {path}; it has: {', '.join(variants)}")
    labels = load_reference(path)["classes"]  # export writes the class names into the drift reference
    if len(labels) != num_classes:
        raise LeafnetError(f"{path} is inconsistent: {num_classes} classes, {len(labels)} names")
    if variant == "auto":
        shape = (batch_size, 3, spec["input_size"], spec["input_size"])
        loaders = {name: (lambda file=file: _runtime(file, threads, device)) for name, file in variants.items()}
        variant, runtime = fastest_variant(loaders, shape, f"{path} (export directory)")
    else:
        runtime = _runtime(variants[variant], threads, device)
    name = f"{path} ({variant})"
    calibration = _calibration(path / CALIBRATION_FILE, variants[variant].name)
    return LoadedModel(runtime, labels, spec, version, _served_options(), name, variant, variants[variant], calibration)


def _calibration(path: Path, model_file: str) -> Calibration | None:
    try:
        return Calibration.read(path, model_file)
    except (OSError, ValueError, KeyError) as error:
        raise LeafnetError(f"cannot read {path}: {_first_line(error)}") from None


def fastest_variant(loaders: dict[str, Callable[[], object]], shape: tuple, where: str) -> tuple[str, object]:
    """(name, runtime) of the variant whose batch of `shape` runs fastest here, and a log line saying which
    and why. The variants take turns, a call each per round, on one fixed random batch (speed does not depend
    on pixel values), so a moment of a busy machine slows one call of each rather than all of one; each
    variant's fastest call counts. At least one round, more while CHOICE_BUDGET_S lasts."""
    batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    started = time.perf_counter()
    runtimes, failed = {}, {}
    for name, load in loaders.items():  # a variant that cannot run here is left out, and said so
        try:
            runtime = load()
            for _ in range(WARMUP_CALLS):
                runtime.logits(batch)
            runtimes[name] = runtime
        except Exception as error:
            failed[name] = _first_line(error)
    for name, reason in failed.items():
        logger.warning("predict: variant %s of %s left out: it does not run here: %s", name, where, reason)
    if not runtimes:
        raise LeafnetError(f"no variant of {where} runs here: {'; '.join(f'{n}: {r}' for n, r in failed.items())}")
    seconds = dict.fromkeys(runtimes, float("inf"))
    for _ in range(MAX_ROUNDS):
        for name, runtime in runtimes.items():
            t0 = time.perf_counter()
            runtime.logits(batch)
            seconds[name] = min(seconds[name], time.perf_counter() - t0)
        if time.perf_counter() - started > CHOICE_BUDGET_S:
            break
    name = min(seconds, key=seconds.get)
    timings = ", ".join(f"{n} {s * 1000:.1f}" for n, s in sorted(seconds.items(), key=lambda item: item[1]))
    logger.info(
        "predict: variant %s of %s, the fastest here: ms per batch of %d: %s (chosen in %.1f s; variant= picks one)",
        name, where, shape[0], timings, time.perf_counter() - started,
    )  # fmt: skip
    return name, runtimes[name]


def _from_archive(path: Path, threads: int, device: str) -> LoadedModel:
    """The archive's own files, as its handler reads them (leafnet/serving/handler.py initialize)."""
    with tempfile.TemporaryDirectory(prefix="leafnet-predict-") as tmp:
        model_dir = Path(tmp)
        manifest = unpack_archive(path, model_dir)
        try:
            model_file = model_dir / manifest["model"]["serializedFile"]
            spec = json.loads((model_dir / "preprocess.json").read_text())
            names = json.loads((model_dir / "index_to_name.json").read_text())
            labels = [names[str(i)] for i in range(len(names))]
            model_config = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
        except (KeyError, OSError, ValueError, yaml.YAMLError) as error:
            raise LeafnetError(f"{path} is not a leafnet archive: {_first_line(error)}") from None
        runtime = _runtime(model_file, threads, device)  # loaded into memory: the files may go
        calibration = _calibration(model_dir / CALIBRATION_FILE, model_file.name)
    version = str(manifest["model"].get("modelVersion", ""))
    options = model_config.get("handler") or {}
    name = f"{path} ({model_file.name})"
    return LoadedModel(runtime, labels, spec, version, options, name, calibration=calibration)


def _from_checkpoint(path: Path, threads: int, device: str) -> LoadedModel:
    """The checkpoint's network; its version is the one export gives it by default (the file's sha256)."""
    from leafnet.checkpoint import load_checkpoint
    from leafnet.data.transforms import PreprocessSpec
    from leafnet.fsutil import sha256_file
    from leafnet.models import model_from_checkpoint

    checkpoint = load_checkpoint(path)
    try:
        spec = PreprocessSpec.from_checkpoint(checkpoint, checkpoint["config"]["data"]["root"])
        labels = list(checkpoint["class_names"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # timm's notes on deprecated architecture names
            network = model_from_checkpoint(checkpoint)
    except (KeyError, TypeError) as error:
        raise LeafnetError(f"{path} lacks {error} that prediction needs; re-train with this leafnet") from None
    except RuntimeError as error:  # weights that do not fit the architecture
        raise LeafnetError(f"cannot rebuild the model of {path}: {_first_line(error)}") from None
    runtime = EagerRuntime(network, threads, _torch_device(device))
    version = sha256_file(path)[:12]
    return LoadedModel(runtime, labels, spec.to_dict(), version, _served_options(), f"{path} (checkpoint)")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
