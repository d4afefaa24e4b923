"""The TorchServe handler of every leafnet archive: image bytes in, top-k classes out.

It follows TorchServe's own idiom, so BaseHandler.handle times it (HandlerTime) and its profiler hook
wraps it: `preprocess` turns each request into a model input or a refusal of its own, `inference` runs
one forward pass over the batch's good images, `postprocess` answers each request in order. One bad
image costs its own request a 4xx with a JSON reason; the others in the batch are answered.

It reads from the archive: the model (TorchScript or ONNX), `preprocess.json` (the checkpoint's
PreprocessSpec, so a raw upload is decoded, fitted and normalised exactly like a test image),
`index_to_name.json`, `calibration.json` (the threshold above which the model's out-of-distribution score
makes an answer `unknown`), and the `handler:` section of model-config.yaml (`topk`, `max_image_pixels`,
`prepare_timeout_s`, `large_image_pixels`, `threads`, `drift_log`, `drift_max_per_s`, `unknown_policy`:
flag answers unknown images with `unknown: true`, refuse answers them 422). Large images take
turns (admission.py): under load one may be answered 429 while small ones go ahead. Subclasses BaseHandler, not
VisionHandler/ImageClassifier: those import captum, and without it the worker dies with a misleading "No
module named 'ts.torch_handler.handler'".
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ts.torch_handler.base_handler import BaseHandler

from .admission import DEFAULT_LARGE_IMAGE_PIXELS, RETRY_AFTER_S, LargeImageGate, decoded_pixels
from .answers import DEFAULT_TOPK, top_k
from .calibration import CALIBRATION_FILE, Calibration, check_policy
from .drift import DriftSampler, drift_line
from .image_io import RejectedImage
from .image_stats import image_stats
from .metrics import HandlerMetrics
from .preprocess import DEFAULT_PREPARE_TIMEOUT_S, Preprocessor
from .requests import content_type_of, request_bytes, status_of
from .runtime import Runtime, available_cpus

logger = logging.getLogger(__name__)

DEFAULT_DRIFT_MAX_PER_S = 10.0  # lines per second per server, shared by its workers


@dataclass
class Batch:
    """One TorchServe batch on its way through the handler."""

    results: list  # per request: its answer (dict) or refusal (JSON text); None until decided
    positions: list[int] = field(default_factory=list)  # requests with a model input, in batch order
    inputs: list[np.ndarray] = field(default_factory=list)
    drift_stats: dict[int, dict] = field(default_factory=dict)  # position -> statistics, when sampled
    logits: np.ndarray | None = None
    scores: np.ndarray | None = None  # out-of-distribution scores; None for a model exported without them


class LeafnetServingHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        model_file = model_dir / context.manifest["model"]["serializedFile"]
        self.version = str(context.manifest["model"].get("modelVersion", ""))
        self.spec = json.loads((model_dir / "preprocess.json").read_text())
        names = json.loads((model_dir / "index_to_name.json").read_text())
        self.labels = [names[str(i)] for i in range(len(names))]
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        options = yaml_config.get("handler", {}) or {}
        self.topk = min(int(options.get("topk", DEFAULT_TOPK)), len(self.labels))
        self.calibration = Calibration.read(model_dir / CALIBRATION_FILE, model_file.name)
        self.unknown_policy = check_policy(str(options.get("unknown_policy", "flag")))
        if self.calibration is None:  # an archive exported before calibration, or a renamed model file
            logger.warning(
                "leafnet: no threshold for %s in %s: answers say unknown: null and unknown_policy=%s refuses nothing",
                model_file.name, CALIBRATION_FILE, self.unknown_policy,
            )  # fmt: skip
        timeout_s = float(options.get("prepare_timeout_s", DEFAULT_PREPARE_TIMEOUT_S) or 0) or None  # 0: none
        # max_image_pixels unset: derived from the spec's sizes (preprocess.default_max_pixels)
        self.preprocessor = Preprocessor(self.spec, int(options.get("max_image_pixels") or 0) or None, timeout_s)
        large = int(options.get("large_image_pixels") or DEFAULT_LARGE_IMAGE_PIXELS)
        self.gate = LargeImageGate(model_dir, large)  # the model's workers share model_dir, so its lock
        # Workers of this model running at once (leafnet sets minWorkers = maxWorkers): they split the cores
        # and the drift-line budget.
        workers = max(1, int(yaml_config.get("maxWorkers", 1) or 1))
        max_per_s = float(options.get("drift_max_per_s", DEFAULT_DRIFT_MAX_PER_S)) / workers
        self.drift = DriftSampler(bool(options.get("drift_log", True)), max_per_s)
        threads = int(options.get("threads", 0)) or max(1, available_cpus() // workers)
        gpu = properties.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and _cuda_available() else "cpu"
        self.runtime = Runtime(model_file, threads, device, spinning=False)
        self.model_name = context.model_name
        self.metrics = HandlerMetrics(context.metrics, self.model_name)  # BaseHandler.handle needs the cache too
        self.initialized = True
        unknown = (
            f"{self.calibration.score} score over {self.calibration.threshold:.6g}: unknown ({self.unknown_policy})"
            if self.calibration
            else "no unknown detection"
        )
        logger.info(
            "leafnet: loaded %s on %s (%d classes, %d threads, images up to %d pixels, %s s each; %s)",
            model_file.name, self.runtime.device, len(self.labels), threads, self.preprocessor.max_pixels, timeout_s,
            unknown,
        )  # fmt: skip

    def preprocess(self, data: list[dict]) -> Batch:
        batch = Batch([None] * len(data))
        deadlines, bodies = {}, {}
        for position, item in enumerate(data):
            deadlines[position] = self.preprocessor.deadline()  # per request: base64 decoding counts too
            try:
                bodies[position] = request_bytes(item, content_type_of(self.context, position))
            except RejectedImage as error:
                batch.results[position] = self._refuse(position, error.kind, str(error))
        fit = self.preprocessor.fit
        large = [position for position, body in bodies.items() if self.gate.is_large(decoded_pixels(body, fit))]
        small = [position for position in bodies if position not in large]
        for position in small:
            self._prepare(batch, position, bodies[position], deadlines[position])
        if large:
            self._prepare_large(batch, large, bodies, deadlines, alone=not small)
        return batch

    def _prepare_large(self, batch: Batch, large: list[int], bodies: dict, deadlines: dict, alone: bool) -> None:
        """The first large image when the batch has nothing smaller and no other worker is decoding one;
        the others, 429 (admission.py)."""
        with self.gate.turn() if alone else contextlib.nullcontext(False) as turn:
            for index, position in enumerate(large):
                if turn and index == 0:
                    self._prepare(batch, position, bodies[position], deadlines[position])
                    continue
                why = "smaller images were waiting" if not alone else "another large image is being decoded"
                batch.results[position] = self._refuse(
                    position, "busy", f"busy: large images take turns and {why}; retry in {RETRY_AFTER_S} s"
                )
                self.context.set_response_header(position, "Retry-After", str(RETRY_AFTER_S))

    def _prepare(self, batch: Batch, position: int, body: bytes, deadline) -> None:
        """One request's model input, or its refusal."""
        try:
            image, upload_size = self.preprocessor.fitted(body, deadline)
            batch.inputs.append(self.preprocessor.tensor(image))
            batch.positions.append(position)
            if self._drift_sampled():
                stats = self._drift_stats(image, upload_size)
                if stats is not None:
                    batch.drift_stats[position] = stats
        except RejectedImage as error:
            batch.results[position] = self._refuse(position, error.kind, str(error))
        except Exception as error:  # a decoder bug must cost this request only, not the batch
            logger.exception("leafnet: request %d failed", position)
            reason = f"cannot process image: {type(error).__name__}"
            batch.results[position] = self._refuse(position, "internal", reason)

    def inference(self, batch: Batch, *args, **kwargs) -> Batch:
        if batch.inputs:
            started = time.perf_counter()
            batch.logits, batch.scores = self.runtime.outputs(np.stack(batch.inputs))
            self._record("leafnet_inference_seconds", time.perf_counter() - started)
            self._record("leafnet_batch_size", len(batch.inputs))
        return batch

    def postprocess(self, batch: Batch) -> list:
        if batch.logits is not None:
            scores = batch.scores if batch.scores is not None else [None] * len(batch.positions)
            for position, row, score in zip(batch.positions, batch.logits, scores, strict=True):
                answer = top_k(row, self.labels, self.topk, self.version, score, self.calibration)
                batch.results[position] = self._answer_or_refusal(position, answer)
                self._record("leafnet_top1_probability", answer["confidence"])
                if position in batch.drift_stats:
                    logger.info("%s", drift_line(self.model_name, self.version, batch.drift_stats[position], answer))
        return batch.results

    def _answer_or_refusal(self, position: int, answer: dict):
        """The answer; for an unknown image under unknown_policy=refuse, a 422 that says why."""
        if not answer["unknown"]:
            return answer
        self._record("leafnet_unknown_total", 1)
        if self.unknown_policy == "flag":
            return answer
        reason = (
            f"unknown: the image does not look like what the model was trained on (out-of-distribution score "
            f"{answer['ood_score']:.4g} above {self.calibration.threshold:.4g})"
        )
        return self._refuse(position, "unknown", reason, unknown=True, confidence=answer["confidence"])

    def _is_explain(self) -> bool:
        """An `explain` header (or /explanations) gets an ordinary answer: leafnet has no explanations, and
        BaseHandler's explain path would fail the whole batch."""
        return False

    def _is_describe(self) -> bool:
        """A `describe` header gets an ordinary answer too: BaseHandler's describe path answers one item for
        the whole batch, which TorchServe rejects for every request in it."""
        return False

    def _drift_sampled(self) -> bool:
        """Whether to log this request: the log level lets the line through and the sampler has a token."""
        return logger.isEnabledFor(logging.INFO) and self.drift.take()

    def _drift_stats(self, image, upload_size: tuple[int, int]) -> dict | None:
        try:
            features = image_stats(image, upload_size, self.preprocessor.background)
        except Exception:  # monitoring must never cost the caller an answer
            logger.warning("leafnet: drift statistics failed; request answered without them", exc_info=True)
            return None
        return {"size": list(upload_size), "features": features}

    def _request_id(self, position: int) -> str:
        try:
            return self.context.get_request_header(position, "X-Request-Id") or "-"
        except (AttributeError, IndexError, KeyError):  # a context without request headers (direct calls)
            return "-"

    def _record(self, name: str, value: float, *extra_dimension: str) -> None:
        self.metrics.record(name, value, *extra_dimension)

    def _refuse(self, position: int, kind: str, reason: str, **details) -> str:
        status = status_of(kind)
        self.context.set_response_status(code=status, phrase=reason, idx=position)
        # The proxy's request id joins this line to its access log line (and to the client's answer).
        logger.info("leafnet: refused request %s: %d %s: %s", self._request_id(position), status, kind, reason)
        self._record("leafnet_rejected_total", 1, kind)
        return json.dumps({"error": reason, "code": status, **details})


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
