"""The exported model files on the device: TorchScript against the eager model, onnxruntime's GPU providers
against its CPU provider. Each is compared output by output on test images (largest logit difference, top-1
agreement) and timed at one batch size. Every call copies the batch to the device and the outputs back, as
the serving handler does."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from leafnet.checkpoint import load_checkpoint
from leafnet.data.dataset import ManifestDataset
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.errors import LeafnetError
from leafnet.export.torchscript import quiet_deprecations
from leafnet.gpu_check.config import ParitySection
from leafnet.gpu_check.report import Skip, one_line
from leafnet.models import model_from_checkpoint
from leafnet.serving.calibration import CALIBRATION_FILE
from leafnet.serving.runtime import onnx_session, split_outputs

Outputs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # batch -> (logits, ood scores)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def parity_images(checkpoint: dict, data_root: str, count: int) -> np.ndarray:
    """`count` test images spread over the split (sorted by class), eval-transformed as export's parity set."""
    dataset = ManifestDataset(data_root, "test", eval_transform(PreprocessSpec.from_dict(checkpoint["preprocess"])))
    if len(dataset) == 0:
        raise LeafnetError(f"the test split of {data_root} is empty")
    picks = sorted({round(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset)))})
    return np.stack([dataset[i][0].numpy() for i in picks]).astype(np.float32)


def eager_outputs(checkpoint: dict, export_dir: Path, device: str) -> Outputs:
    """The trained model on `device`, its logits divided by the temperature the model files carry."""
    temperature = float(json.loads((export_dir / CALIBRATION_FILE).read_text())["temperature"])
    model = model_from_checkpoint(checkpoint).float().to(device).eval()

    def run(batch: np.ndarray) -> tuple[np.ndarray, None]:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).to(device)) / temperature
        return logits.float().cpu().numpy(), None

    return run


def torchscript_outputs(path: Path, device: str) -> Outputs:
    with quiet_deprecations():
        module = torch.jit.load(str(path), map_location=device).eval()

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            result = module(torch.from_numpy(batch).to(device))
        return split_outputs([result] if isinstance(result, torch.Tensor) else list(result))

    return run


def onnx_outputs(session) -> Outputs:
    name = session.get_inputs()[0].name
    return lambda batch: split_outputs(session.run(None, {name: np.ascontiguousarray(batch)}))


def compare(outputs: Outputs, reference: tuple[np.ndarray, np.ndarray | None], images: np.ndarray, batch: int) -> dict:
    """Largest |logit difference|, top-1 agreement and largest relative ood-score difference against `reference`."""
    logits, scores = zip(*(outputs(images[i : i + batch]) for i in range(0, len(images), batch)), strict=True)
    logits = np.concatenate(logits)
    found = {
        "images": len(images),
        "max_abs_logit_diff": float(np.abs(logits - reference[0]).max()),
        "top1_agreement": round(float((logits.argmax(1) == reference[0].argmax(1)).mean()), 4),
    }
    if reference[1] is not None and scores[0] is not None:
        scores = np.concatenate(scores)
        found["max_rel_ood_score_diff"] = float(
            (np.abs(scores - reference[1]) / np.maximum(np.abs(reference[1]), 1e-6)).max()
        )
    return found


def latency(outputs: Outputs, batch: np.ndarray, section: ParitySection, device: str) -> dict:
    """Median milliseconds of one call on `batch` after warm-up, and the images per second it makes."""
    for _ in range(section.warmup):
        outputs(batch)
    times = []
    for _ in range(section.runs):
        started = time.perf_counter()
        outputs(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "batch_size": len(batch),
        "latency_ms": round(1000 * median, 3),
        "images_per_s": round(len(batch) / median, 1),
    }


def within(name: str, found: dict, section: ParitySection) -> None:
    if found["max_abs_logit_diff"] > section.max_abs_logit or found["top1_agreement"] < section.min_top1_agreement:
        raise LeafnetError(
            f"{name}: largest logit difference {found['max_abs_logit_diff']:.3g} (at most {section.max_abs_logit}), "
            f"top-1 agreement {found['top1_agreement']:.2%} (at least {section.min_top1_agreement:.0%})"
        )


def _batch(images: np.ndarray, size: int) -> np.ndarray:
    return np.resize(images, (size, *images.shape[1:])).astype(np.float32)


def torchscript_parity(checkpoint_path: str, export_dir: Path, data_root: str, device: str, section: ParitySection):
    """model.ts.pt on `device` against the eager model on `device`; on CUDA also against itself on the CPU."""
    checkpoint = load_checkpoint(checkpoint_path)
    images = parity_images(checkpoint, data_root, section.images)
    eager = eager_outputs(checkpoint, export_dir, device)
    scripted = torchscript_outputs(export_dir / "model.ts.pt", device)
    reference = eager(images)
    details = {"device": device, "vs_eager": compare(scripted, reference, images, section.batch_size)}
    within(f"TorchScript on {device} vs eager on {device}", details["vs_eager"], section)
    if device != "cpu":
        on_cpu = torchscript_outputs(export_dir / "model.ts.pt", "cpu")(images)
        details["vs_torchscript_on_cpu"] = compare(scripted, on_cpu, images, section.batch_size)
        within(f"TorchScript on {device} vs on the CPU", details["vs_torchscript_on_cpu"], section)
    batch = _batch(images, section.batch_size)
    details["latency"] = {"torchscript": latency(scripted, batch, section, device)}
    details["latency"]["eager"] = latency(eager, batch, section, device)
    details["speedup_vs_eager"] = round(
        details["latency"]["eager"]["latency_ms"] / details["latency"]["torchscript"]["latency_ms"], 3
    )
    return details


def onnxruntime_parity(export_dir: Path, checkpoint_path: str, data_root: str, device: str, section: ParitySection):
    """model.onnx under each GPU provider onnxruntime offers against its CPU provider (on device=cpu: the CPU
    provider against the eager model)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    checkpoint = load_checkpoint(checkpoint_path)
    images = parity_images(checkpoint, data_root, section.images)
    batch = _batch(images, section.batch_size)
    cpu = onnx_outputs(onnx_session(export_dir / "model.onnx"))
    details = {"available_providers": available, "providers": {}}
    if device == "cpu":
        found = compare(cpu, eager_outputs(checkpoint, export_dir, "cpu")(images), images, section.batch_size)
        within("onnxruntime CPUExecutionProvider vs eager on the CPU", found, section)
        details["providers"]["CPUExecutionProvider"] = {
            "vs_eager_on_cpu": found,
            **latency(cpu, batch, section, device),
        }
        return details
    if "CUDAExecutionProvider" not in available:
        raise Skip(
            f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (providers: {', '.join(available)}): "
            "install onnxruntime-gpu in place of onnxruntime, built for this CUDA major version "
            f"(torch's is {torch.version.cuda})"
        )
    reference = cpu(images)
    details["cpu_latency"] = latency(cpu, batch, section, "cpu")
    failures = []
    for provider in GPU_PROVIDERS:
        if provider not in available:
            details["providers"][provider] = {
                "status": "skipped",
                "reason": f"not in onnxruntime {ort.__version__}'s providers",
            }
            continue
        try:
            details["providers"][provider] = _provider_parity(export_dir, provider, reference, images, batch, section)
        except Exception as error:  # one provider failing (TensorRT missing its libraries) is its result
            details["providers"][provider] = {"status": "failed", "reason": one_line(error)}
            failures.append(f"{provider}: {one_line(error)}")
    if failures:
        raise LeafnetError("; ".join(failures))
    return details


def _provider_parity(export_dir: Path, provider: str, reference, images, batch, section: ParitySection) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    chain = [
        provider,
        *(["CUDAExecutionProvider"] if provider != "CUDAExecutionProvider" else []),
        "CPUExecutionProvider",
    ]
    started = time.perf_counter()
    session = ort.InferenceSession(str(export_dir / "model.onnx"), options, providers=chain)
    if session.get_providers()[0] != provider:
        raise LeafnetError(
            f"onnxruntime fell back to {session.get_providers()[0]}: {provider} did not load (its CUDA libraries must "
            f"match the major version onnxruntime-gpu was built for; torch here is CUDA {torch.version.cuda})"
        )
    outputs = onnx_outputs(session)
    found = compare(outputs, reference, images, section.batch_size)
    first_call_s = round(time.perf_counter() - started, 2)  # session and, for TensorRT, the engine build
    within(f"onnxruntime {provider} vs CPUExecutionProvider", found, section)
    return {
        "status": "ok",
        "vs_cpu_provider": found,
        "setup_seconds": first_call_s,
        **latency(outputs, batch, section, "cuda"),
    }
