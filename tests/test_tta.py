"""Test-time augmentation (leafnet/tta.py; `tta=` of `leafnet evaluate` and `leafnet predict`): flip is the mean
of the two passes' probabilities computed by hand; the mirrored model input is the mirrored image's
preprocessing where the steps are symmetric, a pixel off where they are not; evaluate and predict report it
beside the single pass, which stays as it was; an unknown mode is a one-line error."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from leafnet.checkpoint import load_checkpoint
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.errors import LeafnetError
from leafnet.evaluation import EvalConfig, FlipAveraged, evaluate_checkpoint
from leafnet.models import model_from_checkpoint
from leafnet.predict import Predictor
from leafnet.serving.answers import softmax
from leafnet.serving.preprocess import Preprocessor
from tests.conftest import REPO

COMMAND = "../leafnet/__main__.py"  # run_script runs scripts/<name>: this is `python -m leafnet`
TOLERANCE = 1e-6 + 1e-12  # answers round probabilities to 6 decimals (tests/test_predict.py)


@pytest.fixture(scope="module")
def images(tiny_leaves) -> list[Path]:
    return sorted((tiny_leaves / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def mar(exported) -> Path:
    report, config = exported
    (name,) = [name for name, facts in report["archives"].items() if facts["variant"] == "onnx-int8"]
    return Path(config.model_store) / name


def by_hand(predictor: Predictor, images: list[Path]) -> np.ndarray:
    """The mean of the softmax probabilities of each image's model input and of that input reversed along
    its width, from the predictor's own preprocessing and model, one batch."""
    batch = np.stack([predictor.preprocessor.tensor(predictor.preprocessor.fitted(p.read_bytes())[0]) for p in images])
    plain = predictor.model.runtime.logits(batch)
    mirror = predictor.model.runtime.logits(np.ascontiguousarray(batch[:, :, :, ::-1]))
    return (softmax(plain) + softmax(mirror)) / 2


@pytest.mark.parametrize("model", ["mar", "checkpoint"])
def test_flip_answers_with_the_mean_of_the_two_passes(model, mar, tiny_checkpoint, images):
    path = mar if model == "mar" else tiny_checkpoint
    predictor = Predictor.load(path, tta="flip", top_k=4)
    outcomes = list(predictor.outcomes(images))
    expected = by_hand(predictor, images)
    single = Predictor.load(path, top_k=4).predict(images)
    for outcome, probabilities, served in zip(outcomes, expected, single, strict=True):
        order = np.argsort(-probabilities, kind="stable")
        assert [p["index"] for p in outcome.answer["predictions"]] == order[:4].tolist()
        got = [p["probability"] for p in outcome.answer["predictions"]]
        assert np.abs(np.array(got) - probabilities[order[:4]]).max() <= TOLERANCE
        assert outcome.answer["tta"] == "flip" and outcome.answer["model_version"] == served["model_version"]
        assert outcome.plain == served  # the single pass beside it: the server's answer, unchanged
    assert all("tta" not in answer for answer in single)  # tta=none: the answers as before


def test_flip_with_an_onnx_model_loads_no_torch(mar, images):
    """tta.py imports torch only for tensors: flipped ONNX answers stay as light as plain ones."""
    code = (
        "import sys\n"
        "from leafnet.predict import Predictor\n"
        f"assert Predictor.load({str(mar)!r}, tta='flip').predict([{str(images[0])!r}])[0]['tta'] == 'flip'\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_the_evaluation_wrapper_gives_the_log_of_the_mean_probabilities(tiny_checkpoint):
    model = model_from_checkpoint(load_checkpoint(tiny_checkpoint)).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = FlipAveraged(model)(images)
        mean = (model(images).softmax(1) + model(images.flip(3)).softmax(1)) / 2
    torch.testing.assert_close(logits.exp(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.softmax(1), mean, rtol=0, atol=1e-6)  # its softmax: the mean again


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _spec(input_size: int, crop_pct: float) -> dict:
    return PreprocessSpec(input_size, crop_pct, mean=[0.3] * 3, std=[0.4] * 3, fit_size=128, fit_mode="pad").to_dict()


@pytest.mark.parametrize(("input_size", "crop_pct"), [(56, 1.0), (32, 1.0), (224, 0.875)])
def test_the_mirrored_input_is_the_mirrored_images_preprocessing_when_the_margins_are_even(input_size, crop_pct):
    """Prepared images are fit_size squares; resized to int(input_size / crop_pct) and centre-cropped with an
    even margin (the demo's 56 px, the tests' 32, 224 at 0.875), the flipped tensor is the mirror's, exactly:
    on the served path (Preprocessor) and on evaluate's (timm's eval transform)."""
    spec = _spec(input_size, crop_pct)
    preprocessor = Preprocessor(spec)
    image = _random_image(128, 128)
    plain = preprocessor.tensor(preprocessor.fitted(_png(image))[0])
    mirror = preprocessor.tensor(preprocessor.fitted(_png(ImageOps.mirror(image)))[0])
    np.testing.assert_array_equal(plain[:, :, ::-1], mirror)
    transform = eval_transform(PreprocessSpec.from_dict(spec))
    torch.testing.assert_close(transform(image).flip(2), transform(ImageOps.mirror(image)), rtol=0, atol=0)


def test_an_odd_margin_leaves_the_mirror_a_pixel_over():
    """crop_pct 0.95 at 224 px: 235 -> 224 crops 6 pixels on the left, 5 on the right, so the flipped input
    is the mirror's preprocessing shifted by one column; a photo with an odd letterbox margin (99 px wide in
    a 128 square) is not exactly mirrored either (tta.py's docstring says so)."""
    preprocessor = Preprocessor(_spec(224, 0.95))
    image = _random_image(128, 128)
    plain = preprocessor.tensor(preprocessor.fitted(_png(image))[0])[:, :, ::-1]
    mirror = preprocessor.tensor(preprocessor.fitted(_png(ImageOps.mirror(image)))[0])
    assert not np.array_equal(plain, mirror)
    np.testing.assert_array_equal(plain[:, :, 1:], mirror[:, :, :-1])
    preprocessor = Preprocessor(_spec(56, 1.0))
    narrow = _random_image(99, 128)
    plain = preprocessor.tensor(preprocessor.fitted(_png(narrow))[0])[:, :, ::-1]
    assert not np.array_equal(plain, preprocessor.tensor(preprocessor.fitted(_png(ImageOps.mirror(narrow)))[0]))


def test_evaluate_writes_the_tta_metrics_beside_the_unchanged_plain_ones(tiny_checkpoint, tmp_path, caplog):
    def run(mode: str) -> tuple[dict, str]:
        config = EvalConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / mode), workers=0, tta=mode)
        lines = []
        report = evaluate_checkpoint(config, log=lines.append)
        assert json.loads((tmp_path / mode / "eval.json").read_text()) == report
        return report, lines[0]

    plain, plain_line = run("none")
    flip, flip_line = run("flip")
    assert "tta" not in plain and {k: v for k, v in flip.items() if k != "tta"} == plain
    assert flip["tta"]["mode"] == "flip"
    assert set(flip["tta"]) == {"mode", "count", "top1", "top5", "loss", "macro", "per_class"}
    # the tta block is the mean of the two passes over the test split, by hand
    checkpoint = load_checkpoint(tiny_checkpoint)
    model = model_from_checkpoint(checkpoint).eval()
    transform = eval_transform(PreprocessSpec.from_dict(checkpoint["preprocess"]))
    root = Path(checkpoint["config"]["data"]["root"]) / "test"
    files = sorted(root.rglob("*.png"))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])
    truth = torch.tensor([checkpoint["class_names"].index(p.parent.name) for p in files])
    with torch.no_grad():
        mean = (model(batch).softmax(1) + model(batch.flip(3)).softmax(1)) / 2
    assert flip["tta"]["count"] == len(files)
    assert flip["tta"]["top1"] == round((mean.argmax(1) == truth).double().mean().item(), 4)
    assert flip["tta"]["loss"] == pytest.approx(-mean[range(len(files)), truth].log().mean().item(), abs=1e-4)
    assert plain_line.startswith("test: top-1 ") and "tta=" not in plain_line
    assert flip_line.startswith(plain_line.split("  (")[0] + "; tta=flip: top-1 ")


def predict(run_script, *args):
    return run_script(COMMAND, "predict", *map(str, args))


def test_predict_outputs_name_the_mode_and_the_audit_gives_both(mar, images, run_script, tmp_path):
    for mode in ("none", "flip"):
        for suffix in ("csv", "jsonl"):
            done = predict(run_script, mar, *images, f"tta={mode}", "--output", tmp_path / f"{mode}.{suffix}")
            assert done.returncode == 0, done.stderr
    with open(tmp_path / "none.csv", newline="") as f:
        plain_rows = list(csv.DictReader(f))
    with open(tmp_path / "flip.csv", newline="") as f:
        flip_rows = list(csv.DictReader(f))
    assert "tta" not in plain_rows[0] and list(plain_rows[0])[-6:-3] == ["model_version", "truth", "error"]
    assert list(plain_rows[0])[-3:] == ["confidence", "unknown", "ood_score"]
    assert list(flip_rows[0])[-7:-3] == ["model_version", "tta", "truth", "error"]
    assert {row["tta"] for row in flip_rows} == {"flip"}
    expected = Predictor.load(mar, tta="flip").predict(images)
    assert [row["label_1"] for row in flip_rows] == [a["predictions"][0]["label"] for a in expected]
    records = [json.loads(line) for line in (tmp_path / "flip.jsonl").read_text().splitlines()]
    assert [r["tta"] for r in records] == ["flip"] * len(images)
    assert all("tta" not in json.loads(line) for line in (tmp_path / "none.jsonl").read_text().splitlines())
    plain_audit = json.loads((tmp_path / "none.audit.json").read_text())
    flip_audit = json.loads((tmp_path / "flip.audit.json").read_text())
    assert "tta" not in plain_audit and {k: v for k, v in flip_audit.items() if k != "tta"} == plain_audit
    truth = [p.parent.name for p in images]
    assert flip_audit["tta"]["mode"] == "flip" and flip_audit["tta"]["count"] == len(images)
    top1 = sum(a["predictions"][0]["label"] == t for a, t in zip(expected, truth, strict=True)) / len(images)
    assert flip_audit["tta"]["top1"] == round(top1, 4)
    assert f"; tta=flip: top-1 {100 * top1:.2f}%" in done.stdout
    table = predict(run_script, mar, *images[:2], "tta=flip", "-q").stdout.splitlines()
    assert table[0].split() == ["path", "label", "probability", "unknown", "tta"] and table[1].split()[-1] == "flip"


def test_an_unknown_mode_is_a_one_line_error(mar, images, tiny_checkpoint, run_script, caplog):
    message = "error: unknown tta mode 'mirror': use one of none, flip"
    done = predict(run_script, mar, images[0], "tta=mirror")
    assert (done.returncode, done.stderr.splitlines()) == (2, [message])
    done = run_script("evaluate.py", f"checkpoint={tiny_checkpoint}", "tta=mirror")
    assert (done.returncode, done.stderr.splitlines()) == (2, [message])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="leafnet"), pytest.raises(LeafnetError, match=message[7:]):
        Predictor.load(mar, tta="mirror")
    assert not caplog.records  # refused before the model loads
