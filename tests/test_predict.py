"""Offline predictions (leafnet/predict.py, `leafnet predict`, `leafnet bench predict`): the archived handler's
answers from an export directory, a .mar and a checkpoint; the export's recorded test top-1; every input
form; bad files listed and counted; outputs, lists, stdin and the truth. tests/test_serving.py compares
`leafnet predict` with a real TorchServe."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leafnet.bench.predict import PredictBenchConfig, run_predict_benchmark
from leafnet.errors import LeafnetError
from leafnet.predict import Predictor
from leafnet.serving.harness import ArchivedHandler
from tests.conftest import REPO, png_claiming, unpack

COMMAND = "../leafnet/__main__.py"  # run_script runs scripts/<name>: this is `python -m leafnet`


# Answers round probabilities to 6 decimals: 1e-6 apart at most, one unit in the last place (the slack: 0.22377
# - 0.223769 is a hair over 1e-6 in binary floating point).
TOLERANCE = 1e-6 + 1e-12


def calibrated_away(answer: dict, temperature: float) -> dict:
    """A calibrated answer's probabilities as the raw network gives them (every class in the top-k): the
    logits carried the temperature, so p_raw is proportional to p ** temperature."""
    raw = np.array([p["probability"] for p in answer["predictions"]], dtype=np.float64) ** temperature
    raw /= raw.sum()
    predictions = [{**p, "probability": round(float(q), 6)} for p, q in zip(answer["predictions"], raw, strict=True)]
    return {**answer, "predictions": predictions}


def assert_same_answers(offline: list[dict], served: list[dict], tolerance: float = TOLERANCE) -> None:
    """Labels identical, in order; probabilities within `tolerance` (default 1e-6); the same model version."""
    assert len(offline) == len(served)
    for mine, theirs in zip(offline, served, strict=True):
        assert [p["label"] for p in mine["predictions"]] == [p["label"] for p in theirs["predictions"]]
        assert [p["index"] for p in mine["predictions"]] == [p["index"] for p in theirs["predictions"]]
        for a, b in zip(mine["predictions"], theirs["predictions"], strict=True):
            assert abs(a["probability"] - b["probability"]) <= tolerance, (a, b)
        assert mine["model_version"] == theirs["model_version"]


@pytest.fixture(scope="module")
def images(tiny_leaves) -> list[Path]:
    return sorted((tiny_leaves / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def export_dir(exported) -> Path:
    return Path(exported[1].output)


@pytest.fixture(scope="module")
def archives(exported) -> dict[str, Path]:
    """variant -> its .mar"""
    report, config = exported
    return {facts["variant"]: Path(config.model_store) / name for name, facts in report["archives"].items()}


@pytest.fixture(scope="module")
def handler_answers(archives, images, tmp_path_factory) -> dict[str, list[dict]]:
    """variant -> the archive's own handler's answers (TorchServe's Context, in-process) for `images`."""
    answers = {}
    for variant, archive in archives.items():
        handler = ArchivedHandler(unpack(archive, tmp_path_factory.mktemp(variant))[0])
        answers[variant] = handler([{"body": path.read_bytes()} for path in images])
    return answers


@pytest.mark.slow
def test_export_archive_and_checkpoint_answer_as_the_archived_handler(
    exported, export_dir, archives, images, handler_answers
):
    _, config = exported
    for variant, archive in archives.items():
        expected = handler_answers[variant]
        assert_same_answers(Predictor.load(archive).predict(images), expected)
        assert_same_answers(Predictor.load(export_dir, variant).predict(images), expected)
    # the checkpoint's eager network ranks as its traced TorchScript does, with the version export gives it, but
    # uncalibrated: a checkpoint has no temperature nor threshold (export fits them), so unknown is null
    raw = Predictor.load(config.checkpoint).predict(images)
    temperature = json.loads((export_dir / "calibration.json").read_text())["temperature"]
    # (within 5e-4: the served probabilities were rounded to 6 decimals before the temperature came off, which
    # multiplies the rounding by the temperature)
    assert_same_answers(raw, [calibrated_away(a, temperature) for a in handler_answers["torchscript"]], 5e-4)
    assert all(answer["unknown"] is None for answer in raw)


def test_every_input_form_gets_the_answer_of_its_file(archives, images, tmp_path):
    predictor = Predictor.load(archives["onnx-int8"])
    path = images[0]
    with Image.open(path) as opened:
        rgba = opened.convert("RGBA")
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # a transparent pixel: composited over the background as in a file
    rgba.save(tmp_path / "rgba.png")
    with Image.open(path) as opened:
        forms = [str(path), path, path.read_bytes(), bytearray(path.read_bytes()), opened]
        answers = predictor.predict(forms)
    assert all(answer == answers[0] for answer in answers)
    assert predictor.predict([rgba]) == predictor.predict([tmp_path / "rgba.png"])
    assert predictor.predict([rgba.convert("CMYK")]) == predictor.predict([_saved(rgba.convert("CMYK"), tmp_path)])
    with pytest.raises(LeafnetError, match=r"input 0: expected a path, a PIL image or bytes, got int"):
        predictor.predict([3])
    # one input on its own is a list of one, not a sequence of characters or bytes
    assert (
        predictor.predict(str(path)) == predictor.predict(path) == predictor.predict(path.read_bytes()) == [answers[0]]
    )


def test_file_names_that_are_not_utf8_reach_the_output_as_the_system_gave_them(archives, images, tmp_path, run_script):
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: not UTF-8, so Python holds it with a surrogate
    (folder / odd).write_bytes(images[0].read_bytes())
    done = predict(run_script, str(archives["onnx-int8"]), str(folder), "--output", str(tmp_path / "p.csv"))
    assert done.returncode == 0, done.stderr
    assert b"caf\xe9.png" in (tmp_path / "p.csv").read_bytes()


def _saved(image: Image.Image, folder: Path) -> Path:
    image.save(folder / "cmyk.tiff")
    return folder / "cmyk.tiff"


def test_predict_names_the_refused_input_and_outcomes_go_past_it(archives, images):
    predictor = Predictor.load(archives["onnx-int8"])
    with pytest.raises(LeafnetError, match=r"^input 1 \(bytes\): not an image \(no known image format\)$"):
        predictor.predict([images[0], b"not an image"])
    outcomes = list(predictor.outcomes([b"", images[0], png_claiming(5000, 5000)]))
    assert [o.kind for o in outcomes] == ["empty", None, "too_large"]
    assert outcomes[1].answer == predictor.predict([images[0]])[0]
    assert "exceeds max_pixels=12200000" in outcomes[2].error  # the server's cap, not a time limit
    lifted = Predictor.load(archives["onnx-int8"], max_image_pixels=30_000_000)
    assert next(lifted.outcomes([png_claiming(5000, 5000)])).kind == "corrupt"  # past the cap, then decoded


def test_auto_times_every_variant_and_says_which_it_took(export_dir, archives, caplog):
    with caplog.at_level(logging.INFO, logger="leafnet"):
        predictor = Predictor.load(export_dir, batch_size=4)
    (line,) = [r.getMessage() for r in caplog.records if "the fastest here" in r.getMessage()]
    variants = ("torchscript", "torchscript-dynq", "onnx", "onnx-dynq", "onnx-int8")
    assert all(f"{name} " in line for name in variants) and "ms per batch of 4" in line
    assert line.startswith(f"predict: variant {predictor.model.variant} of {export_dir} (export directory)")
    with pytest.raises(LeafnetError, match=r"unknown variant 'onx' in .*; it has: torchscript, torchscript-dynq,"):
        Predictor.load(export_dir, "onx")
    with pytest.raises(LeafnetError, match=r"variant=onnx picks a model of an export directory"):
        Predictor.load(archives["onnx-int8"], "onnx")


def test_a_withheld_variant_is_named_as_withheld(export_dir, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    record = json.loads((copy / "export.json").read_text())
    record["withheld"] = {"onnx-dynq": {"reasons": ["onnx-dynq loses 3 of 198 test images"], "quantized": True}}
    (copy / record["variants"].pop("onnx-dynq")["file"]).unlink()
    (copy / "export.json").write_text(json.dumps(record))
    with pytest.raises(LeafnetError, match=r"has no onnx-dynq: export withheld it \(onnx-dynq loses 3 of 198"):
        Predictor.load(copy, "onnx-dynq")
    assert Predictor.load(copy, "onnx-int8").model.variant == "onnx-int8"


@pytest.mark.slow
def test_predictions_need_no_torchserve(archives, images):
    """The base install has no TorchServe: with `ts` unimportable, an archive still answers."""
    code = (
        "import sys; sys.modules['ts'] = None\n"
        "from leafnet.predict import Predictor\n"
        f"print(Predictor.load({str(archives['torchscript'])!r}).predict([{str(images[0])!r}])[0]['model_version'])\n"
        "loaded = [m for m in sys.modules if m.startswith('leafnet.serving.') and m.split('.')[-1] in "
        "('handler', 'harness', 'metrics')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


def predict(run_script, *args) -> subprocess.CompletedProcess:
    return run_script(COMMAND, "predict", *map(str, args))


@pytest.mark.slow
def test_the_command_reproduces_the_exports_recorded_test_top1(exported, export_dir, tiny_leaves, run_script, tmp_path):
    report, _ = exported
    for variant, facts in report["variants"].items():
        done = predict(
            run_script, export_dir, tiny_leaves / "test", f"variant={variant}", "--output", tmp_path / "p.csv"
        )
        assert done.returncode == 0, done.stderr
        audit = json.loads((tmp_path / "p.audit.json").read_text())
        assert (audit["top1"], audit["top5"], audit["count"]) == (facts["test_top1"], facts["test_top5"], 8), variant
        assert (tmp_path / "p.confusion.png").stat().st_size > 0
        assert f"-> {tmp_path / 'p.audit.json'}, {tmp_path / 'p.confusion.png'}" in done.stdout


@pytest.fixture
def mixed(images, tmp_path) -> Path:
    """Two good images and four bad ones, flat (no truth)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, path in enumerate(images[:2]):
        shutil.copy(path, folder / f"good{i}.png")
    (folder / "text.png").write_text("hello")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.png").write_bytes(images[0].read_bytes()[:200])
    (folder / "huge.png").write_bytes(png_claiming(5000, 5000))
    (folder / "notes.md").write_text("not an image extension: not collected")
    return folder


def test_bad_files_are_listed_with_reasons_and_counted_and_the_run_goes_on(archives, mixed, run_script):
    done = predict(run_script, archives["onnx-int8"], mixed, "--output", mixed.parent / "p.jsonl")
    assert done.returncode == 0, done.stderr
    refused = sorted(line for line in done.stderr.splitlines() if line.startswith("refused: "))
    assert [line.split(": ", 2)[1] for line in refused] == [
        str(mixed / n) for n in ("cut.png", "empty.jpg", "huge.png", "text.png")
    ]
    assert "empty file" in refused[1] and "exceeds max_pixels" in refused[2] and "not an image" in refused[3]
    assert re.search(
        r"predict: 6 images, 2 answered \(\d unknown, \d+\.\d%\), 4 refused \(the reasons: stderr\)", done.stdout
    )
    records = [json.loads(line) for line in (mixed.parent / "p.jsonl").read_text().splitlines()]
    assert [r.get("kind") for r in records] == ["corrupt", "empty", None, None, "too_large", "not_image"]


def test_a_run_where_nothing_could_be_used_fails_in_one_line(archives, mixed, run_script):
    done = predict(run_script, archives["onnx-int8"], mixed / "text.png", mixed / "empty.jpg", "-q")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: none of the 2 input(s) could be used, e.g. {mixed / 'text.png'}: not an image (no known image format)"
    ]


def test_user_mistakes_fail_in_one_line_before_any_work(archives, export_dir, images, tmp_path, run_script):
    (tmp_path / "list.txt").write_text(f"{images[0]}\nmissing.png\n")
    output = tmp_path / "p.csv"
    mistakes = {
        (images[0].parent / "nothing.png", "--output", output): f"error: {images[0].parent / 'nothing.png'} not found",
        (tmp_path / "list.txt",): f"error: {tmp_path / 'missing.png'} not found ({tmp_path / 'list.txt'}, line 2)",
        (images[0], "--output", tmp_path / "p.txt"): "error: --output",
        (images[0], "--top-k", "0"): "error: --top-k 0: a whole number of at least 1",
        (images[0], "--truth", tmp_path / "none.csv"): f"error: --truth {tmp_path / 'none.csv'} not found",
        (images[0], "--bogus"): "error: unknown option --bogus",
        (images[0], "bogus=1"): "error: unknown config key 'bogus'",
        (): "error: usage: leafnet predict MODEL INPUTS...",
    }
    for args, message in mistakes.items():
        done = predict(run_script, archives["onnx-int8"], *args)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, (args, done.stderr)
        assert done.stderr.startswith(message), (args, done.stderr)
    done = predict(run_script, tmp_path / "model.mar", images[0])
    assert done.returncode == 2 and done.stderr.startswith(f"error: model {tmp_path / 'model.mar'} not found")
    assert not output.exists()


def test_csv_jsonl_and_table_outputs(archives, images, run_script, tmp_path):
    mar = archives["onnx-int8"]
    done = predict(run_script, mar, *images[:3], "--output", tmp_path / "p.csv", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "path", "label_1", "probability_1", "label_2", "probability_2", "model_version", "truth", "error",
        "confidence", "unknown", "ood_score",
    ]  # fmt: skip
    answers = Predictor.load(mar).predict(images[:3])
    assert [r["path"] for r in rows] == [str(p) for p in images[:3]]
    assert [r["label_1"] for r in rows] == [a["predictions"][0]["label"] for a in answers]
    assert [r["truth"] for r in rows] == [p.parent.name for p in images[:3]]
    assert float(rows[0]["probability_2"]) == answers[0]["predictions"][1]["probability"]
    assert [r["unknown"] for r in rows] == [str(a["unknown"]).lower() for a in answers]
    assert [float(r["confidence"]) for r in rows] == [a["confidence"] for a in answers]
    done = predict(run_script, mar, *images[:3], "--output", tmp_path / "p.jsonl")
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["unknown"] for r in records] == [a["unknown"] for a in answers]
    assert [{k: r[k] for k in answers[0]} for r in records] == answers
    assert [r["truth"] for r in records] == [p.parent.name for p in images[:3]]
    done = predict(run_script, mar, *images[:3], "-q")
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["path", "label", "probability", "unknown"]
    assert [line.split()[3] for line in lines[1:4]] == [{False: "no", True: "yes"}[a["unknown"]] for a in answers]
    assert [line.split()[:2] for line in lines[1:4]] == [
        [str(p), a["predictions"][0]["label"]] for p, a in zip(images[:3], answers, strict=True)
    ]


def test_paths_from_stdin_and_from_a_txt_list(archives, images, run_script, tmp_path, monkeypatch):
    mar = archives["onnx-int8"]
    direct = predict(run_script, mar, *images, "--output", tmp_path / "direct.jsonl")
    assert direct.returncode == 0
    expected = (tmp_path / "direct.jsonl").read_text()
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{p}\n" for p in images)))
    assert predict(run_script, mar, "-", "--output", tmp_path / "stdin.jsonl").returncode == 0
    assert (tmp_path / "stdin.jsonl").read_text() == expected
    # relative to the list's folder; a listed folder stands for its images
    first_class = images[0].parent
    lines = ["# the test split", "", os.path.relpath(first_class, tmp_path)]
    lines += [os.path.relpath(p, tmp_path) for p in images if p.parent != first_class]
    (tmp_path / "all.txt").write_text("\n".join(lines) + "\n")
    done = predict(run_script, mar, tmp_path / "all.txt", "--output", tmp_path / "list.jsonl")
    assert done.returncode == 0

    def resolved(text: str) -> list[dict]:
        return [{**r, "path": Path(r["path"]).resolve()} for r in map(json.loads, text.splitlines())]

    assert resolved((tmp_path / "list.jsonl").read_text()) == resolved(expected)


def test_truth_from_a_manifest(archives, images, run_script, tmp_path):
    """Images outside class folders, labelled by a manifest with prepare's path,label columns."""
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["path,label"]
    for i, path in enumerate(images):
        shutil.copy(path, flat / f"{i}.png")
        rows.append(f"flat/{i}.png,{path.parent.name}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    mar = archives["onnx-int8"]
    for args, name in (
        ([images[0].parent.parent], "folders"),
        ([flat, "--truth", tmp_path / "manifest.csv"], "manifest"),
    ):
        done = predict(run_script, mar, *args, "--output", tmp_path / f"{name}.csv")
        assert done.returncode == 0, done.stderr
    by_folders = json.loads((tmp_path / "folders.audit.json").read_text())
    by_manifest = json.loads((tmp_path / "manifest.audit.json").read_text())
    assert by_manifest["truth"] == str(tmp_path / "manifest.csv") and by_folders["truth"] == "the folders' names"
    assert {k: v for k, v in by_manifest.items() if k != "truth"} == {
        k: v for k, v in by_folders.items() if k != "truth"
    }
    assert set(by_folders["per_class"]) == {p.parent.name for p in images}
    (tmp_path / "manifest.csv").write_text("\n".join(rows[:-1]) + "\n")
    done = predict(run_script, mar, flat, "--truth", tmp_path / "manifest.csv")
    assert (
        done.returncode == 2
        # the error is the last line; log lines before it go to stderr too (stdout is for the table)
        and done.stderr.endswith(f"\nerror: --truth {tmp_path / 'manifest.csv'} does not list {flat / '7.png'}\n")
    )


def test_bench_predict_measures_both_sides_on_the_same_files(export_dir, tiny_leaves, tmp_path):
    config = PredictBenchConfig(
        model=str(export_dir), images=str(tiny_leaves / "test"), batch_size=4, images_per_round=16, rounds=1,
        output=str(tmp_path),
    )  # fmt: skip
    report = run_predict_benchmark(config, log=lambda _: None)
    assert json.loads((tmp_path / "predict_benchmark.json").read_text()) == report
    assert report["distinct_images"] == 8 and report["images_per_round"] == 16
    assert report["ratio"] == round(report["images_per_s"]["predictor"] / report["images_per_s"]["plain"], 3)
    with pytest.raises(LeafnetError, match="pick an ONNX variant"):
        run_predict_benchmark(PredictBenchConfig(model=str(export_dir), variant="torchscript"))
