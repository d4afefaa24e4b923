"""The serving check: the TorchScript archive's own handler, in this process with TorchServe's Context as a
worker sets it up (leafnet.serving.harness), given GPU 0 as TorchServe gives a worker its GPU, answering one
batch of PNG uploads. Its answers must name the classes the eager model names for the same files."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from leafnet.checkpoint import load_checkpoint
from leafnet.data.prepared import PreparedData
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.errors import LeafnetError
from leafnet.export.archive import unpack_archive
from leafnet.extras import installed
from leafnet.gpu_check.config import ServingSection
from leafnet.gpu_check.report import Skip
from leafnet.models import model_from_checkpoint


def serve_a_batch(
    archive: Path,
    checkpoint_path: str,
    data_root: str,
    work_dir: Path,
    device: str,
    section: ServingSection,
    tie: float,
) -> dict:
    """tie: a logit margin under which the eager model's top two classes count as tied (the parity tolerance):
    the handler may answer either of them."""
    if not installed("ts"):
        raise Skip("needs TorchServe's Python package: pip install 'leafnet[serve]'")
    if not archive.is_file():
        raise Skip(f"no {archive.name}: export packs it only with torch-model-archiver (pip install 'leafnet[serve]')")
    from leafnet.serving.harness import ArchivedHandler  # imports TorchServe's ts

    model_dir = work_dir / "serving" / archive.stem
    unpack_archive(archive, model_dir)
    served = ArchivedHandler(model_dir, whole_machine=True, gpu=0 if device == "cuda" else None)
    loaded_on = served.handler.runtime.device
    if device == "cuda" and not loaded_on.startswith("cuda"):
        raise LeafnetError(f"given GPU 0, the handler loaded the model on {loaded_on}")
    files = [path for path, _ in PreparedData(data_root).samples("test")][: served.batch_size]
    requests = [{"body": path.read_bytes()} for path in files]
    answers = served(requests)  # the first call also warms up cuDNN
    refused = [answer for answer in answers if not isinstance(answer, dict)]
    if refused:
        raise LeafnetError(f"the handler refused {len(refused)} of {len(answers)} test images: {refused[0]}")
    times = []
    for _ in range(section.repeats):
        started = time.perf_counter()
        served(requests)
        times.append(time.perf_counter() - started)
    served_top1 = [answer["predictions"][0]["index"] for answer in answers]
    expected, margins = _eager_top1(checkpoint_path, files)
    agree = [a == b for a, b in zip(served_top1, expected, strict=True)]
    untied = [ok for ok, margin in zip(agree, margins, strict=True) if margin > tie]
    if not all(untied):
        raise LeafnetError(
            f"the handler's top-1 differs from the eager model's on {untied.count(False)} untied image(s)"
        )
    median = statistics.median(times)
    return {
        "archive": str(archive),
        "handler_device": loaded_on,
        "batch_size": len(files),
        "latency_ms": round(1000 * median, 2),  # decoding and preprocessing on the CPU, the forward pass on the device
        "images_per_s": round(len(files) / median, 1),
        "top1_agreement_with_eager": sum(agree) / len(agree),
        "first_answer": {
            key: answers[0][key] for key in ("model_version", "confidence", "unknown") if key in answers[0]
        },
    }


def _eager_top1(checkpoint_path: str, files: list[Path]) -> tuple[list[int], list[float]]:
    """The eager model's top-1 class for each file, on the CPU, through the checkpoint's eval transform, and the
    margin of its logit over the runner-up's."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint).eval()
    transform = eval_transform(PreprocessSpec.from_dict(checkpoint["preprocess"]))
    with torch.inference_mode():
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in files])
        top2 = model(batch).topk(2, dim=1)
    return top2.indices[:, 0].tolist(), (top2.values[:, 0] - top2.values[:, 1]).tolist()
