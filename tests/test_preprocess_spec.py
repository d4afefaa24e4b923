"""The preprocessing spec travels unchanged from prepare to the served handler: a non-black background
set at prepare time is what training fills rotations with and what the handler letterboxes with."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import leafnet.export.exporter as exporter
from leafnet.checkpoint import load_checkpoint
from leafnet.data.prepare import PrepareConfig, prepare
from leafnet.data.transforms import PreprocessSpec
from leafnet.errors import LeafnetError
from leafnet.export.config import GateConfig
from leafnet.serving import preprocess
from leafnet.serving.harness import ArchivedHandler
from leafnet.train import main as train
from tests.conftest import export_config, tiny_config, unpack

WHITE = [255, 255, 255]


def _cutout(shape: str, k: int) -> bytes:
    """A shape on a transparent canvas, wider than tall: letterboxing it adds rows above and below."""
    image = Image.new("RGBA", (60 + 4 * k, 30), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    box = (6 + k, 4, 50 + 3 * k, 26)
    (draw.ellipse if shape == "round" else draw.rectangle)(box, fill=(20 + 10 * k, 120, 40, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def white_export(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("white")
    for shape in ("round", "square"):
        (base / "raw" / shape).mkdir(parents=True)
        for k in range(6):
            (base / "raw" / shape / f"{k}.png").write_bytes(_cutout(shape, k))
    data = base / "data"
    prepare(
        PrepareConfig(
            source="imagefolder", input=str(base / "raw"), output=str(data), size=32, resize="pad",
            background=WHITE, val_fraction=0.34, test_fraction=0.34, workers=1,
        ),
        log=lambda _: None,
    )  # fmt: skip
    train(tiny_config(data, base / "runs", "model.name=resnet10t", "schedule.epochs=1", "logging.tensorboard=false"))
    checkpoint = base / "runs" / "run" / "checkpoints" / "last.pt"
    # One epoch is near chance: quantization may flip any share of the 4 test images.
    config = export_config(checkpoint, base, served=["onnx-int8"], gates=GateConfig(max_top1_drop=100.0))
    exporter.export_checkpoint(config, log=lambda _: None)
    return checkpoint, Path(config.model_store) / "leafnet.mar"


@pytest.mark.slow
def test_a_white_background_reaches_the_checkpoint_the_archive_and_the_handler(white_export, tmp_path):
    checkpoint_path, archive = white_export
    spec = load_checkpoint(checkpoint_path)["preprocess"]
    assert (spec["background"], spec["fit_size"], spec["fit_mode"]) == (WHITE, 32, "pad")
    model_dir, _ = unpack(archive, tmp_path / "mar")
    assert json.loads((model_dir / "preprocess.json").read_text()) == spec  # written unchanged
    handler = ArchivedHandler(model_dir).handler
    upload = _cutout("round", 9)  # 96x30, transparent around the shape: a raw upload, not a prepared image
    fitted, upload_size = handler.preprocessor.fitted(upload)
    assert upload_size == (96, 30) and fitted.size == (32, 32)
    array = handler.preprocessor.tensor(fitted)
    white = (1.0 - np.array(spec["mean"])) / np.array(spec["std"])  # normalised white, per channel
    # transparent pixels composited over white, letterbox rows above and below the 96x30 cut-out white
    np.testing.assert_allclose(array[:, 0, :], np.repeat(white[:, None], array.shape[2], axis=1), atol=1e-5)
    np.testing.assert_allclose(array[:, -1, :], np.repeat(white[:, None], array.shape[2], axis=1), atol=1e-5)
    assert not np.allclose(array[:, array.shape[1] // 2, array.shape[2] // 2], white, atol=0.1)  # the shape


def test_specs_from_older_checkpoints_take_defaults_and_unknown_keys_are_refused():
    legacy = {"input_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.2] * 3}
    spec = PreprocessSpec.from_dict(legacy)
    assert (spec.fit_size, spec.fit_mode, spec.background) == (None, None, [0, 0, 0])
    with pytest.raises(LeafnetError, match=r"unknown preprocessing keys \['gamma'\]"):
        PreprocessSpec.from_dict({**legacy, "gamma": 2.2})


def test_export_completes_an_older_checkpoints_spec_from_its_data(tiny_leaves):
    older = {"input_size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.2] * 3}
    spec = PreprocessSpec.from_checkpoint({"preprocess": older}, tiny_leaves)
    assert (spec.fit_size, spec.fit_mode, spec.background, spec.mean) == (32, "pad", [0, 0, 0], [0.5] * 3)


def test_the_default_pixel_cap_follows_the_first_resize_within_its_floor_and_ceiling(monkeypatch):
    """max_image_pixels unset: (32 x the side of the first resize) squared, clamped; PIL's own bomb limit
    must stay above any cap, or PIL would refuse first with another limit."""
    demo = PreprocessSpec(input_size=56, fit_size=128, fit_mode="pad").to_dict()
    unprepared = PreprocessSpec(input_size=32, crop_pct=0.5).to_dict()  # first resize: 32 / 0.5 = 64 px
    assert preprocess.default_max_pixels(demo) == preprocess.CAP_CEILING_PIXELS
    assert preprocess.default_max_pixels(unprepared) == preprocess.CAP_FLOOR_PIXELS
    monkeypatch.setattr(preprocess, "CAP_FLOOR_PIXELS", 0)
    monkeypatch.setattr(preprocess, "CAP_CEILING_PIXELS", 10**9)
    assert preprocess.default_max_pixels(demo) == (32 * 128) ** 2
    assert preprocess.default_max_pixels(unprepared) == (32 * 64) ** 2
    assert preprocess.Preprocessor(demo).max_pixels == (32 * 128) ** 2
    assert preprocess.Preprocessor(demo, max_pixels=5_000).max_pixels == 5_000
    with pytest.raises(ValueError, match=r"over PIL's decompression-bomb limit Image\.MAX_IMAGE_PIXELS="):
        preprocess.Preprocessor(demo, max_pixels=Image.MAX_IMAGE_PIXELS + 1)


def test_a_spec_without_a_fit_decodes_uploads_at_full_size():
    """Data not prepared by leafnet: the eval transform resizes the upload itself, as in evaluation."""
    spec = PreprocessSpec(input_size=32).to_dict()
    upload = _cutout("round", 40)  # 220 x 30
    image, upload_size = preprocess.Preprocessor(spec).fitted(upload)
    assert image.size == upload_size == (220, 30) and image.mode == "RGB"
