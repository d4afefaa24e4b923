"""TorchServe handler for leafnet archives: image bytes in, top-k species out.

Self-contained at serve time (torch, onnxruntime, PIL, numpy; no timm or leafnet import), so an
archive runs on a bare TorchServe image. It reads from the archive:
- `image_io.py`: leafnet's own decoder (leafnet/data/image_io.py, PIL and numpy only), so serving
  decodes, composites alpha and resizes raw images exactly as prepare did for training;
- the model: TorchScript (`*.pt`) or ONNX (`*.onnx`, run in an onnxruntime session: TorchServe's own
  ONNX path calls the session like a module and fails);
- `preprocess.json`: the checkpoint's eval preprocessing, plus the `fit` step prepare applied to
  training images, so a raw photo is treated exactly like a training image;
- `index_to_name.json`: class index -> label;
- the `handler:` section of model-config.yaml: `topk`, `max_image_pixels`, `drift_log`, `drift_max_per_s`.

For drift monitoring it logs one line per answered request, `LEAFNET_DRIFT {json}`, with the image's
statistics (`image_stats` from image_io.py, the same code export ran over the training images), the
top-1 class and probability: TorchServe writes the worker's log to model_log.log, and
scripts/drift_report.py compares a window of them with the archive's drift_reference.json.

It reports to TorchServe's metrics (Prometheus on the metrics address, declared in
config/torchserve/metrics.yaml): model latency per batch, batch size, top-1 probability per answer, and
refused inputs by reason.

Subclasses BaseHandler, not VisionHandler/ImageClassifier: those import captum, and without it the
worker dies with a misleading "No module named 'ts.torch_handler.handler'".
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

try:  # export packs leafnet/data/image_io.py beside this file in every .mar
    from image_io import DRIFT_LOG_PREFIX, STATS_VERSION, RejectedImage, decode_image, fit_square, image_stats
except ImportError:  # run from the repository (tests)
    from leafnet.data.image_io import (
        DRIFT_LOG_PREFIX,
        STATS_VERSION,
        RejectedImage,
        decode_image,
        fit_square,
        image_stats,
    )

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 5
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# A drift line costs the worker about 0.2 ms (0.13 ms of statistics, the rest JSON and the log call), where
# the whole request costs about 0.55 ms in-process: capped per second, so a loaded server pays a fixed,
# negligible share of a core, while a quiet one logs every request.
DEFAULT_DRIFT_MAX_PER_S = 10.0
# name: (type, unit, extra dimension): declared in config/torchserve/metrics.yaml for the Prometheus endpoint.
METRICS = {
    "leafnet_inference_seconds": (MetricTypes.HISTOGRAM, "Seconds", None),  # model forward, per batch
    "leafnet_batch_size": (MetricTypes.HISTOGRAM, "Count", None),  # images per forward
    "leafnet_top1_probability": (MetricTypes.HISTOGRAM, "Probability", None),  # per answered request
    "leafnet_rejected_total": (MetricTypes.COUNTER, "Count", "Reason"),  # refused requests by kind
}
FORM_BODY = (
    "body arrived as a form (application/x-www-form-urlencoded, curl's default for --data-binary), which "
    "mangles binary data: add -H 'Content-Type: application/octet-stream' or use curl -T leaf.png"
)
STATUS = {"too_large": 413, "form_body": 415, "internal": 500}  # any other refusal kind is a 400
INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def request_bytes(item: dict, content_type: str = "") -> bytes:
    """The image bytes of one request: raw body, a multipart field, or JSON with base64.

    Refusals are RejectedImage too: TorchServe insists on exactly one class defined in a handler module.
    """
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        raise RejectedImage(FORM_BODY, "form_body")
    payload = item.get("data") if item.get("data") is not None else item.get("body")
    if payload is None:  # multipart with another field name: take the first file-like part
        payload = next((v for v in item.values() if isinstance(v, bytes | bytearray)), None)
    if isinstance(payload, dict):  # TorchServe parses application/json bodies
        payload = payload.get("image", payload.get("data", payload.get("b64")))
        if not isinstance(payload, str):
            raise RejectedImage('JSON body needs an "image" field holding base64 image data', "bad_json")
        payload = _b64(payload)
    elif isinstance(payload, str):
        payload = _b64(payload)  # a text body (text/plain) can only carry base64
    elif payload is not None and not isinstance(payload, bytes | bytearray):
        reason = f"unsupported body ({type(payload).__name__}): send image bytes or JSON with base64"
        raise RejectedImage(reason, "bad_json")
    if not payload:
        raise RejectedImage("empty body: send image bytes (curl -T leaf.png)", "empty")
    return bytes(payload)


def _b64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # wrapped lines are fine
    except (binascii.Error, ValueError):
        raise RejectedImage("image field is not valid base64", "bad_base64") from None


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (containers, Cloud Run),
    which os.cpu_count() ignores: a 2-vCPU container on a 64-core host must not start 64 threads."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs granted by the cgroup quota (v2 cpu.max, else v1 cfs), rounded up; None when unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def content_type_of(context, position: int) -> str:
    headers = context.get_all_request_header(position) or {}
    return next((str(v) for k, v in headers.items() if str(k).lower() == "content-type"), "")


def register_metrics(context) -> dict:
    """The handler's metrics, from the server's metrics config when it declares them, else added here.

    Without a declaration in the server's metrics_config the Prometheus endpoint drops them (unless
    model_metrics_auto_detect is on), but the handler works the same.
    """
    metrics, cache = {}, context.metrics
    for name, (kind, unit, extra) in METRICS.items():
        try:
            metrics[name] = cache.get_metric(name, kind)
        except MetricsCacheKeyError:
            dimensions = ["ModelName", "Level", *([extra] if extra else [])]
            metrics[name] = cache.add_metric_to_cache(name, unit, dimensions, kind)
    return metrics


def eval_tensor(image: Image.Image, spec: dict) -> np.ndarray:
    """timm's eval transform (resize shorter side to input_size / crop_pct, centre crop, normalise)."""
    size = spec["input_size"]
    scale = int(size / spec["crop_pct"])  # timm: math.floor
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = scale, int(scale * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_size != image.size:
        image = image.resize(new_size, INTERPOLATION[spec["interpolation"]])
    left = round((image.width - size) / 2.0)  # torchvision's CenterCrop
    top = round((image.height - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return array.transpose(2, 0, 1)


class LeafnetHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        model_file = model_dir / context.manifest["model"]["serializedFile"]
        self.version = str(context.manifest["model"].get("modelVersion", ""))
        self.spec = json.loads((model_dir / "preprocess.json").read_text())
        self.background = tuple(self.spec.get("background", (0, 0, 0)))
        names = json.loads((model_dir / "index_to_name.json").read_text())
        self.labels = [names[str(i)] for i in range(len(names))]
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        options = yaml_config.get("handler", {}) or {}
        self.topk = min(int(options.get("topk", DEFAULT_TOPK)), len(self.labels))
        self.max_pixels = int(options.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        # Workers of this model running at once (leafnet sets minWorkers = maxWorkers): they split the cores
        # and the drift-line budget.
        workers = max(1, int(yaml_config.get("maxWorkers", 1) or 1))
        self.drift_log = bool(options.get("drift_log", True))
        # drift_max_per_s is per server: each worker keeps its own bucket of an equal share.
        self.drift_max_per_s = float(options.get("drift_max_per_s", DEFAULT_DRIFT_MAX_PER_S)) / workers
        self.drift_capacity = max(self.drift_max_per_s, 1.0)  # one second's worth, at least one line
        self.drift_tokens, self.drift_refilled = self.drift_capacity, time.monotonic()
        threads = int(options.get("threads", 0)) or max(1, available_cpus() // workers)
        gpu = properties.get("gpu_id")
        use_cuda = gpu is not None and torch.cuda.is_available() and model_file.suffix != ".onnx"
        self.device = torch.device(f"cuda:{gpu}" if use_cuda else "cpu")
        self.session = None
        if model_file.suffix == ".onnx":
            import onnxruntime as ort

            session_options = ort.SessionOptions()
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
            # Idle intra-op threads sleep instead of spinning: the worker shares its cores with TorchServe's
            # frontend, and spinning threads starve it.
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(model_file), session_options, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        else:
            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
                self.model = torch.jit.load(str(model_file), map_location=self.device).eval()
        self.model_name = context.model_name
        self.metrics = register_metrics(context) if getattr(context, "metrics", None) is not None else {}
        self.initialized = True
        logger.info(
            "leafnet: loaded %s on %s (%d classes, %d threads)", model_file.name, self.device, len(self.labels), threads
        )

    def image_array(self, data: bytes) -> tuple[np.ndarray, dict | None]:
        """The model input, and the drift statistics when this request is to be logged (else None)."""
        image = decode_image(data, max_pixels=self.max_pixels, background=self.background)
        upload_size = image.size
        fit_step = self.spec.get("fit")
        if fit_step:
            image = fit_square(image, fit_step["size"], fit_step["mode"], self.background)
        stats = None
        if self.drift_sampled():
            try:
                stats = {"size": list(upload_size), "features": image_stats(image, upload_size, self.background)}
            except Exception:  # monitoring must never cost the caller an answer
                logger.warning("leafnet: drift statistics failed; request answered without them", exc_info=True)
        return eval_tensor(image, self.spec), stats

    def drift_sampled(self) -> bool:
        """Whether to log this request: drift_log on, the log level lets the line through, and a token is
        left in a bucket refilled at drift_max_per_s (0: no cap), holding at most one second's worth."""
        if not self.drift_log or not logger.isEnabledFor(logging.INFO):
            return False
        if self.drift_max_per_s <= 0:
            return True
        now = time.monotonic()
        refill = (now - self.drift_refilled) * self.drift_max_per_s
        self.drift_tokens = min(self.drift_capacity, self.drift_tokens + refill)
        self.drift_refilled = now
        if self.drift_tokens < 1.0:
            return False
        self.drift_tokens -= 1.0
        return True

    def log_drift(self, stats: dict, answer: dict) -> None:
        top = answer["predictions"][0]
        record = {
            "t": round(time.time(), 3),
            "model": self.model_name,
            "version": self.version,
            "stats_version": STATS_VERSION,
            "size": stats["size"],
            "features": {name: round(value, 5) for name, value in stats["features"].items()},
            "top1": top["index"],
            "p": top["probability"],
        }
        logger.info("%s %s", DRIFT_LOG_PREFIX, json.dumps(record, separators=(",", ":")))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, {self.input_name: batch})[0]
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def top_k(self, logits: np.ndarray) -> dict:
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        order = np.argsort(-probabilities, kind="stable")[: self.topk]
        predictions = [
            {"label": self.labels[i], "index": int(i), "probability": round(float(probabilities[i]), 6)} for i in order
        ]
        return {"predictions": predictions, "model_version": self.version}

    def record(self, name: str, value: float, *extra_dimension: str) -> None:
        metric = self.metrics.get(name)
        if metric is not None:
            metric.add_or_update(value, [self.model_name, "Model", *extra_dimension])

    def refuse(self, context, position: int, kind: str, reason: str) -> str:
        status = STATUS.get(kind, 400)
        context.set_response_status(code=status, phrase=reason, idx=position)
        self.record("leafnet_rejected_total", 1, kind)
        return json.dumps({"error": reason, "code": status})

    def handle(self, data: list[dict], context) -> list:
        """Decodes each request on its own, so one bad image gets its own 4xx and the rest succeed."""
        results: list = [None] * len(data)
        arrays, positions, observed = [], [], {}
        for position, item in enumerate(data):
            try:
                array, stats = self.image_array(request_bytes(item, content_type_of(context, position)))
                arrays.append(array)
                positions.append(position)
                if stats is not None:
                    observed[position] = stats
            except RejectedImage as error:
                results[position] = self.refuse(context, position, error.kind, str(error))
            except Exception as error:  # a decoder bug must cost this request only, not the batch
                logger.exception("leafnet: request %d failed", position)
                reason = f"cannot process image: {type(error).__name__}"
                results[position] = self.refuse(context, position, "internal", reason)
        if arrays:
            started = time.perf_counter()
            logits = self.logits(np.stack(arrays).astype(np.float32))
            self.record("leafnet_inference_seconds", time.perf_counter() - started)
            self.record("leafnet_batch_size", len(arrays))
            for position, row in zip(positions, logits, strict=True):
                results[position] = self.top_k(row)
                self.record("leafnet_top1_probability", results[position]["predictions"][0]["probability"])
                if position in observed:
                    self.log_drift(observed[position], results[position])
        return results
