"""Offline predictions: `Predictor`, the served answers without a server.

    predictor = Predictor.load("exports/leafnet")            # or a .mar, or a checkpoint .pt
    predictor.predict(["leaf.png", Image.open("b.jpg"), raw_bytes])
    # -> [{"predictions": [{"label", "index", "probability"}, ...], "model_version": "..."}, ...]

An answer is the one TorchServe gives for the same bytes, because the same code makes it: the handler's
decoder and preprocessing (leafnet.serving.preprocess `Preprocessor`), its runtime (leafnet.serving.runtime)
and its answers (leafnet.serving.answers `top_k`), with the archive's model-config.yaml options (topk,
max_image_pixels). The pixel cap stays, so an image is refused as the server refuses it; what guards a
server's shared workers does not: no time limit per image by default (prepare_timeout_s, against hostile
uploads) and no turns for large images (admission.py). Nothing here imports TorchServe: the base install of
leafnet predicts (docs/predict.md).

Refusals: `predict()` raises LeafnetError naming the first input that is not a usable image (and why);
`outcomes()` yields an `Outcome` per input instead, answer or reason, so a caller can go on past bad ones
(`leafnet predict` lists them).

Test-time augmentation (`tta="flip"`, leafnet.tta): each batch runs twice, as it is and mirrored, and the
answer holds the mean of the two passes' probabilities, marked `"tta": "flip"`; the Outcome keeps the
single-pass answer, the server's, beside it. The server makes one pass: TTA is offline only.

Throughput: images are read, decoded and preprocessed by a thread pool (PIL and numpy release the GIL)
while the model runs on the batch before, a few batches ahead at most, so memory stays bounded.
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from leafnet.errors import LeafnetError
from leafnet.predict_model import LoadedModel, load_model
from leafnet.serving import answers
from leafnet.serving.image_io import RejectedImage
from leafnet.serving.preprocess import Preprocessor
from leafnet.serving.runtime import available_cpus
from leafnet.tta import checked_mode, mean_of_probabilities, mirrored

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
# Batches decoding while the model runs on the current one: one keeps the model fed; a second absorbs a
# batch of slow images. More only holds more tensors.
BATCHES_AHEAD = 2
# The modes PNG stores; a PIL image in another mode (CMYK, YCbCr, F, ...) goes to the decoder as TIFF.
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}

Input = str | os.PathLike | bytes | bytearray | Image.Image


def default_decode_threads() -> int:
    """A thread per core but one: the model's intra-op threads take every core (the runtime's default), and
    decoders on all of them at once would stall its parallel sections, which wait for their slowest thread
    (measured: docs/predict.md)."""
    return max(1, available_cpus() - 1)


@dataclass(frozen=True)
class Outcome:
    """One input's result: the server's answer, or the reason the server would refuse it."""

    source: Input  # the input as given
    name: str  # how messages name it: the path, or "input <n> (bytes | PIL image)"
    answer: dict | None = None  # {"predictions": [{"label", "index", "probability"}, ...], "model_version"}
    error: str | None = None  # why it was refused
    kind: str | None = None  # the refusal's kind: image_io.RejectedImage's kinds, unreadable or internal
    plain: dict | None = None  # with test-time augmentation: the single-pass answer, the server's


class Predictor:
    """A loaded model answering batches of images as its server would. Build one with `Predictor.load`."""

    def __init__(
        self,
        model: LoadedModel,
        top_k: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        decode_threads: int = 0,
        max_image_pixels: int | None = None,
        prepare_timeout_s: float | None = None,
        tta: str = "none",
    ) -> None:
        self.tta = checked_mode(tta)
        options = model.options
        k = int(options.get("topk", answers.DEFAULT_TOPK)) if top_k is None else top_k
        if k < 1 or batch_size < 1 or decode_threads < 0:
            raise LeafnetError("top_k and batch_size must be at least 1, decode_threads not negative")
        self.model, self.batch_size = model, batch_size
        self.top_k = min(k, len(model.labels))  # as the handler caps it
        self.decode_threads = decode_threads or default_decode_threads()
        pixels = max_image_pixels or int(options.get("max_image_pixels") or 0) or None  # None: the spec's default
        try:
            self.preprocessor = Preprocessor(model.spec, pixels, prepare_timeout_s or None)
        except ValueError as error:  # a cap above PIL's own limit
            raise LeafnetError(str(error)) from None

    @classmethod
    def load(
        cls,
        model: str | Path,
        variant: str = "auto",
        top_k: int | None = None,
        threads: int = 0,
        device: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        decode_threads: int = 0,
        max_image_pixels: int | None = None,
        prepare_timeout_s: float | None = None,
        tta: str = "none",
    ) -> Predictor:
        """A predictor for an export directory (`variant`: one of export.json's, or auto: the fastest here), a
        TorchServe .mar or a training checkpoint .pt.

        top_k: classes per answer (None: the model-config's topk, 5 unless the archive says otherwise).
        threads: the model's intra-op threads (0: one per core); decode_threads: the decoding pool's (0: one per
        core but one).
        device: auto | cpu | cuda[:N], for TorchScript and checkpoints (ONNX runs on the CPU).
        max_image_pixels: the pixel cap (None: the archive's, else derived from the preprocessing, as served).
        prepare_timeout_s: seconds one image may take to decode and fit (None: no limit).
        tta: test-time augmentation, none (one pass, as served) or flip (the mean of the image's and its
        mirror's probabilities: two passes)."""
        checked_mode(tta)
        loaded = load_model(model, variant, threads, device, batch_size)
        predictor = cls(loaded, top_k, batch_size, decode_threads, max_image_pixels, prepare_timeout_s, tta)
        augmented = "" if tta == "none" else f", tta={tta} (two passes an image; the server makes one)"
        logger.info(
            "predict: %s, %d classes, version %s, on %s with %d threads, decoding on %d, batches of %d%s",
            loaded.name, len(loaded.labels), loaded.version or "-", loaded.runtime.device, loaded.runtime.threads,
            predictor.decode_threads, batch_size, augmented,
        )  # fmt: skip
        return predictor

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def version(self) -> str:
        return self.model.version

    def predict(self, inputs: Iterable[Input]) -> list[dict]:
        """One answer per input, in order (a single path, bytes or image counts as a list of one). Raises
        LeafnetError naming the first input that is refused."""
        answered = []
        for outcome in self.outcomes(inputs):
            if outcome.error is not None:
                raise LeafnetError(f"{outcome.name}: {outcome.error}")
            answered.append(outcome.answer)
        return answered

    def outcomes(self, inputs: Iterable[Input]) -> Iterator[Outcome]:
        """An Outcome per input, in order, as the batches finish; refused inputs do not stop the others."""
        pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="leafnet-decode")
        pending: deque[list[tuple[Input, str, Future]]] = deque()
        if isinstance(inputs, str | os.PathLike | bytes | bytearray | Image.Image):  # one input, not a sequence
            inputs = [inputs]
        try:
            numbered = enumerate(inputs)
            while chunk := list(islice(numbered, self.batch_size)):
                pending.append([(source, *self._submit(pool, position, source)) for position, source in chunk])
                if len(pending) > BATCHES_AHEAD:
                    yield from self._answer(pending.popleft())
            while pending:
                yield from self._answer(pending.popleft())
        finally:  # a caller that stops early leaves no decoding behind
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool: ThreadPoolExecutor, position: int, source: Input) -> tuple[str, Future]:
        if isinstance(source, str | os.PathLike):
            return str(source), pool.submit(self._prepare, Path(source).read_bytes)
        if isinstance(source, bytes | bytearray):
            return f"input {position} (bytes)", pool.submit(self._prepare, lambda: bytes(source))
        if isinstance(source, Image.Image):
            return f"input {position} (PIL image)", pool.submit(self._prepare, lambda: encoded(source))
        raise LeafnetError(f"input {position}: expected a path, a PIL image or bytes, got {type(source).__name__}")

    def _prepare(self, read) -> np.ndarray | tuple[str, str]:
        """The model input of one image, or (reason, kind): the handler's _prepare, the same calls."""
        try:
            image, _ = self.preprocessor.fitted(read())
            return self.preprocessor.tensor(image)
        except RejectedImage as error:
            return str(error), error.kind
        except OSError as error:  # a file that cannot be read (a folder, no permission, gone since listed)
            return f"cannot read: {error.strerror or error}", "unreadable"
        except Exception as error:  # a decoder bug must cost this image only, as in the handler
            logger.exception("predict: an image failed")
            return f"cannot process image: {type(error).__name__}", "internal"

    def _answer(self, chunk: list[tuple[Input, str, Future]]) -> Iterator[Outcome]:
        prepared = [future.result() for _, _, future in chunk]
        good = [tensor for tensor in prepared if isinstance(tensor, np.ndarray)]
        rows = iter(self._answers(np.stack(good)) if good else ())
        for (source, name, _), result in zip(chunk, prepared, strict=True):
            if isinstance(result, np.ndarray):
                answer, plain = next(rows)
                yield Outcome(source, name, answer=answer, plain=plain)
            else:
                yield Outcome(source, name, error=result[0], kind=result[1])

    def _answers(self, batch: np.ndarray) -> list[tuple[dict, dict | None]]:
        """(the answer, the single-pass answer when test-time augmentation made the answer) per image."""
        logits, scores = self.model.runtime.outputs(batch)
        scores = [None] * len(logits) if scores is None else scores
        if self.tta == "none":
            return [(self._top_k(row, score), None) for row, score in zip(logits, scores, strict=True)]
        # The unknown threshold was fitted on single passes: the answer keeps the single pass's score.
        augmented = mean_of_probabilities(logits, self.model.runtime.logits(mirrored(batch)))
        return [
            ({**self._top_k(row, score), "tta": self.tta}, self._top_k(one, score))
            for row, one, score in zip(augmented, logits, scores, strict=True)
        ]

    def _top_k(self, logits: np.ndarray, score: float | None) -> dict:
        return answers.top_k(logits, self.labels, self.top_k, self.version, score, self.model.calibration)


def encoded(image: Image.Image) -> bytes:
    """A PIL image as lossless bytes for the decoder, which takes bytes only: PNG (TIFF for modes PNG lacks)
    with the same pixels, mode (alpha, palette, 16 bits) and EXIF orientation, so the image is answered as
    its file would be. (A large JPEG's file decodes at a reduced DCT scale, its PIL image holds every pixel:
    their answers may differ slightly.)"""
    buffer = io.BytesIO()
    exif = {"exif": image.getexif()} if image.getexif() else {}
    try:
        if image.mode in PNG_MODES:
            image.save(buffer, format="PNG", compress_level=1, **exif)
        else:
            image.save(buffer, format="TIFF", **exif)
    except (OSError, ValueError, KeyError):  # a mode no lossless format of PIL's stores (HSV, ...)
        raise RejectedImage(f"unsupported mode {image.mode}", "unsupported") from None
    return buffer.getvalue()
