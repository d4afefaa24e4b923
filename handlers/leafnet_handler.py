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
- the `handler:` section of model-config.yaml: `topk`, `max_image_pixels`.

Subclasses BaseHandler, not VisionHandler/ImageClassifier: those import captum, and without it the
worker dies with a misleading "No module named 'ts.torch_handler.handler'".
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

try:  # export packs leafnet/data/image_io.py beside this file in every .mar
    from image_io import RejectedImage, decode_image, fit_square
except ImportError:  # run from the repository (tests)
    from leafnet.data.image_io import RejectedImage, decode_image, fit_square

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 5
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def bad_request(reason: str) -> RejectedImage:
    # A refusal is a RejectedImage too: TorchServe insists on exactly one class defined in a handler module.
    return RejectedImage(reason, "bad_request")


def request_bytes(item: dict) -> bytes:
    """The image bytes of one request: raw body, a multipart field, or JSON with base64."""
    payload = item.get("data") if item.get("data") is not None else item.get("body")
    if payload is None:  # multipart with another field name: take the first file-like part
        payload = next((v for v in item.values() if isinstance(v, bytes | bytearray)), None)
    if isinstance(payload, dict):  # TorchServe parses application/json bodies
        payload = payload.get("image", payload.get("data", payload.get("b64")))
        if not isinstance(payload, str):
            raise bad_request('JSON body needs an "image" field holding base64 image data')
        payload = _b64(payload)
    elif isinstance(payload, str):
        payload = _b64(payload)  # a text body (text/plain) can only carry base64
    elif payload is not None and not isinstance(payload, bytes | bytearray):
        raise bad_request(f"unsupported body ({type(payload).__name__}): send image bytes or JSON with base64")
    if not payload:
        raise bad_request("empty body: send image bytes (curl -T leaf.png or --data-binary @leaf.png)")
    return bytes(payload)


def _b64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # wrapped lines are fine
    except (binascii.Error, ValueError):
        raise bad_request("image field is not valid base64") from None


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
        workers = max(1, int(yaml_config.get("maxWorkers", 1) or 1))
        threads = int(options.get("threads", 0)) or max(1, (os.cpu_count() or 1) // workers)
        gpu = properties.get("gpu_id")
        use_cuda = gpu is not None and torch.cuda.is_available() and model_file.suffix != ".onnx"
        self.device = torch.device(f"cuda:{gpu}" if use_cuda else "cpu")
        self.session = None
        if model_file.suffix == ".onnx":
            import onnxruntime as ort

            session_options = ort.SessionOptions()
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(model_file), session_options, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        else:
            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
                self.model = torch.jit.load(str(model_file), map_location=self.device).eval()
        self.initialized = True
        logger.info(
            "leafnet: loaded %s on %s (%d classes, %d threads)", model_file.name, self.device, len(self.labels), threads
        )

    def image_array(self, data: bytes) -> np.ndarray:
        image = decode_image(data, max_pixels=self.max_pixels, background=self.background)
        fit_step = self.spec.get("fit")
        if fit_step:
            image = fit_square(image, fit_step["size"], fit_step["mode"], self.background)
        return eval_tensor(image, self.spec)

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

    @staticmethod
    def refuse(context, position: int, status: int, reason: str) -> str:
        context.set_response_status(code=status, phrase=reason, idx=position)
        return json.dumps({"error": reason, "code": status})

    def handle(self, data: list[dict], context) -> list:
        """Decodes each request on its own, so one bad image gets its own 4xx and the rest succeed."""
        results: list = [None] * len(data)
        arrays, positions = [], []
        for position, item in enumerate(data):
            try:
                arrays.append(self.image_array(request_bytes(item)))
                positions.append(position)
            except RejectedImage as error:
                status = 413 if error.kind == "too_large" else 400
                results[position] = self.refuse(context, position, status, str(error))
            except Exception as error:  # a decoder bug must cost this request only, not the batch
                logger.exception("leafnet: request %d failed", position)
                results[position] = self.refuse(context, position, 500, f"cannot process image: {type(error).__name__}")
        if arrays:
            logits = self.logits(np.stack(arrays).astype(np.float32))
            for position, row in zip(positions, logits, strict=True):
                results[position] = self.top_k(row)
        return results
