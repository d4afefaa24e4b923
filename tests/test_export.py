"""Export: every variant from a tiny trained checkpoint, parity gates, archives, the handler, the benchmark."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

import leafnet.export.exporter as exporter
from leafnet.bench.inference import InferenceBenchConfig, run_inference_benchmark
from leafnet.checkpoint import load_checkpoint, save_checkpoint
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.errors import LeafnetError
from leafnet.export.config import GateConfig
from leafnet.export.onnx_export import export_onnx
from leafnet.export.parity import TopK, allowed_lost_images, calibration_gate_failures, compare_logits, gate_failures
from leafnet.export.torchscript import export_torchscript
from leafnet.models import model_from_checkpoint
from tests.conftest import REPO, unpack

MAR_FILES = {
    "leafnet_handler.py",
    *(
        f"leafnet_serving/{p.name}"
        for p in (REPO / "leafnet" / "serving").glob("*.py")
        if p.name not in ("leafnet_handler.py", "supervisor.py")  # the supervisor runs beside TorchServe
    ),
    "drift_reference.json",
    "calibration.json",
    "preprocess.json",
    "index_to_name.json",
    "model-config.yaml",
    "MAR-INF/MANIFEST.json",
}


@pytest.mark.slow
def test_every_variant_is_written_and_matches_eager(exported):
    report, config = exported
    out = Path(config.output)
    expected = {v.file for v in exporter.VARIANTS} | {"export.json", "drift_reference.json", "calibration.json"}
    expected |= {"reliability.png"}
    assert expected == {p.name for p in out.iterdir()}
    assert json.loads((out / "export.json").read_text()) == report
    for variant in exporter.VARIANTS:
        facts = report["variants"][variant.name]
        assert facts["bytes"] == (out / variant.file).stat().st_size > 0
        if not variant.quantized:
            assert facts["max_abs_logit_diff"] <= 1e-3 and facts["top1_agreement"] == 1.0
            assert facts["test_top1"] == report["eager"]["test_top1"]
        else:
            assert report["eager"]["test_top1"] - facts["test_top1"] <= 0.01
    assert report["variants"]["onnx-int8"]["bytes"] < report["variants"]["onnx"]["bytes"] / 3
    model = onnx.load(str(out / "model.onnx"))
    assert model.opset_import[0].version >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch dimension
    assert not list(out.glob("*.data"))
    assert sorted(report["archives"]) == ["leafnet-onnx-int8.mar", "leafnet.mar"]
    # No staging left (the export stages in hidden directories of the store). The store is the session's
    # shared export, which serving tests running beside this one add their own rebuilt archives to.
    stored = {p.name for p in Path(config.model_store).iterdir()}
    assert set(report["archives"]) <= stored and not [name for name in stored if name.startswith(".")]


@pytest.mark.slow
def test_archives_hold_the_model_handler_and_preprocessing(exported, tmp_path):
    report, config = exported
    checkpoint = load_checkpoint(config.checkpoint)
    for name, facts in report["archives"].items():
        model_dir, manifest = unpack(Path(config.model_store) / name, tmp_path / name)
        model_file = exporter.VARIANT_BY_NAME[facts["variant"]].file
        assert {str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()} == MAR_FILES | {model_file}
        assert manifest["model"]["serializedFile"] == model_file
        # the model version every answer carries: the first 12 hex digits of the checkpoint's sha256
        checkpoint_sha = hashlib.sha256(Path(config.checkpoint).read_bytes()).hexdigest()
        assert manifest["model"]["modelVersion"] == report["version"] == checkpoint_sha[:12]
        # the checkpoint's spec, unchanged: the fit step and background prepare applied included
        preprocess = json.loads((model_dir / "preprocess.json").read_text())
        assert preprocess == checkpoint["preprocess"]
        assert (preprocess["fit_size"], preprocess["fit_mode"], preprocess["background"]) == (32, "pad", [0, 0, 0])
        names = json.loads((model_dir / "index_to_name.json").read_text())
        assert [names[str(i)] for i in range(len(names))] == checkpoint["class_names"]


def _split_images(data: Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths = sorted((data / split).rglob("*.png"))
    return paths, np.array([classes.index(p.parent.name) for p in paths])


@pytest.mark.slow
def test_exported_files_reproduce_eager_when_loaded_back_independently(exported, tiny_leaves):
    """Each file loaded here with onnxruntime or torch.jit directly (not through the exporter's own
    runtime), fed the training eval transform, against the eager model: what export.json claims."""
    import onnxruntime

    report, config = exported
    checkpoint = load_checkpoint(config.checkpoint)
    transform = eval_transform(PreprocessSpec(**checkpoint["preprocess"]))
    eager = model_from_checkpoint(checkpoint).eval()
    temperature = report["calibration"]["temperature"]  # the variants' logits carry it
    for split in ("val", "test"):
        paths, labels = _split_images(tiny_leaves, split, checkpoint["class_names"])
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])  # one batch, as export's
        with torch.no_grad():
            reference = eager(batch).numpy() / temperature
        if split == "test":
            assert report["eager"]["test_top1"] == pytest.approx((reference.argmax(1) == labels).mean())
        for variant in exporter.VARIANTS:
            path = Path(config.output) / variant.file
            if path.suffix == ".onnx":
                session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                logits = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
            else:
                with torch.no_grad():
                    logits = torch.jit.load(str(path), map_location="cpu")(batch)[0].numpy()  # (logits, ood_score)
            facts = report["variants"][variant.name]
            if split == "test":
                assert facts["test_top1"] == pytest.approx((logits.argmax(1) == labels).mean()), variant.name
            elif not variant.quantized:
                assert np.abs(logits - reference).max() <= 1e-4, variant.name
                assert (logits.argmax(1) == reference.argmax(1)).all(), variant.name


@pytest.mark.slow
def test_the_int8_accuracy_gate_refuses_through_the_cli_and_writes_nothing(exported, tmp_path, monkeypatch, run_script):
    """A real int8 model calibrated on activations a thousand times too small (so real inputs saturate it)
    goes through scripts/export.py: exit 2, one line naming the variant and the loss, nothing written."""
    _, config = exported
    quantize = exporter.quantize_onnx_static

    def miscalibrated(prepared, out, batches, int8):
        quantize(prepared, out, (batch * 1e-3 for batch in batches), int8)

    monkeypatch.setattr(exporter, "quantize_onnx_static", miscalibrated)
    output, store = tmp_path / "out", tmp_path / "store"
    argv = [f"checkpoint={config.checkpoint}", f"output={output}", f"model_store={store}", "workers=0", "threads=1"]
    argv.append("calibration.ood_per_family=4")
    result = run_script("export.py", *argv)
    stderr = result.stderr
    assert result.returncode == 2
    assert stderr.count("\n") == 1 and "parity gate failed, nothing written: onnx-int8 loses" in stderr, stderr
    assert not output.exists() and not (store.exists() and list(store.iterdir()))
    assert [p for p in tmp_path.iterdir() if p != store] == []  # no staging directory left behind either


def test_compare_logits_and_topk():
    reference = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    agreement = compare_logits(reference, reference + np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 1.5]]))
    assert agreement.max_abs_logit == 1.5 and agreement.top1_agreement == 0.5
    meter = TopK()
    meter.update(reference, np.array([0, 0]))
    assert meter.result() == {"top1": 0.5, "top5": 1.0}


def test_gate_failures_name_the_variant_and_the_limit():
    gates = GateConfig(fp32_max_abs_logit=1e-3, max_top1_drop=1.0)
    close = compare_logits(np.zeros((2, 3)), np.full((2, 3), 1e-4))
    assert gate_failures("onnx", False, close, 0.9, 0.9, gates, 100) == []
    far = compare_logits(np.eye(3), np.eye(3)[::-1] * 2)
    assert any("onnx max |Δlogit| 2 > 0.001" in f for f in gate_failures("onnx", False, far, 0.9, 0.9, gates, 100))
    assert any("differs from eager on 2 of 3" in f for f in gate_failures("onnx", False, far, 0.9, 0.9, gates, 100))
    assert gate_failures("onnx-int8", True, far, 0.895, 0.9, gates, 200) == []  # 0.5 points: allowed
    assert gate_failures("onnx-int8", True, far, 0.89, 0.90, gates, 100) == []  # exactly the limit, despite float error
    assert gate_failures("onnx-int8", True, far, 0.88, 0.9, gates, 100) == [
        "onnx-int8 loses 2 of 100 test images, 2.00 points of test top-1 (limit 1.0 points: 1 image)"
    ]


def test_the_top1_limit_is_the_nearest_whole_number_of_test_images():
    # 1.0 point of 198 images is 1.98 images: 2 may be lost (1.01 points), not 1, and 3 may not
    assert allowed_lost_images(1.0, 198) == 2
    gates = GateConfig(max_top1_drop=1.0)
    agreement = compare_logits(np.zeros((1, 2)), np.zeros((1, 2)))
    assert gate_failures("onnx-dynq", True, agreement, 191 / 198, 193 / 198, gates, 198) == []
    assert gate_failures("onnx-dynq", True, agreement, 190 / 198, 193 / 198, gates, 198) == [
        "onnx-dynq loses 3 of 198 test images, 1.52 points of test top-1 (limit 1.0 points: 2 images)"
    ]
    # the nearest, not the next: 1.0 point of 140 images is 1.4 images, so 1 may be lost
    assert allowed_lost_images(1.0, 140) == 1
    assert allowed_lost_images(1.0, 10_000) == 100 and allowed_lost_images(0.0, 198) == 0


@pytest.mark.slow
def test_a_perturbed_export_fails_the_gate_and_leaves_everything_as_it_was(
    exported, tiny_checkpoint, tmp_path, monkeypatch
):
    _, config = exported
    before = {p: p.read_bytes() for p in [*Path(config.output).iterdir(), *Path(config.model_store).iterdir()]}

    def perturbed_torchscript(model, example, path):
        broken = copy.deepcopy(model)  # the scored model: calibrated logits and the ood score
        with torch.no_grad():
            broken.model.get_classifier().bias.add_(0.01)
        export_torchscript(broken, example, path)

    monkeypatch.setattr(exporter, "export_torchscript", perturbed_torchscript)
    with pytest.raises(LeafnetError, match=r"parity gate failed.*torchscript max \|Δlogit\|"):
        exporter.export_checkpoint(config, log=lambda _: None)
    after = {p: p.read_bytes() for p in [*Path(config.output).iterdir(), *Path(config.model_store).iterdir()]}
    assert after == before
    assert sorted(p.name for p in Path(config.output).parent.iterdir()) == ["tiny"]


class _Unexportable(nn.Module):
    def forward(self, x):
        raise NotImplementedError("this layer has no tracing support")


def test_an_architecture_that_cannot_export_gives_one_line(tmp_path):
    with pytest.raises(LeafnetError, match="cannot trace the model to TorchScript: this layer"):
        export_torchscript(_Unexportable(), torch.zeros(2, 3, 8, 8), tmp_path / "m.pt")
    with pytest.raises(LeafnetError, match="cannot export the model to ONNX"):
        export_onnx(_Unexportable(), torch.zeros(2, 3, 8, 8), tmp_path / "m.onnx")


@pytest.mark.slow
def test_bad_checkpoints_fail_with_one_line_and_write_nothing(tiny_checkpoint, tmp_path, run_script):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint" * 10)
    future = tmp_path / "future.pt"
    save_checkpoint(future, {**load_checkpoint(tiny_checkpoint), "format_version": 99})
    # One refusal as a real process (the exit status a shell sees), the rest in-process through the same
    # __main__ block.
    process = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export.py"), f"checkpoint={tmp_path / 'missing.pt'}", "output=out"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 2 and process.stderr.startswith("error: checkpoint not found"), process.stderr
    cases = {
        tmp_path / "missing.pt": "checkpoint not found",
        corrupt: "cannot read checkpoint",
        future: "has checkpoint format 99",
    }
    for checkpoint, message in cases.items():
        result = run_script("export.py", f"checkpoint={checkpoint}", "model_store=store", "output=out", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr
        assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())
        assert not (tmp_path / "out").exists()
    unknown_model = tmp_path / "unknown_model.pt"
    save_checkpoint(unknown_model, {**load_checkpoint(tiny_checkpoint), "model_name": "resnet_nonexistent"})
    refusals = {
        (f"checkpoint={unknown_model}",): "cannot rebuild the model",
        (f"checkpoint={tiny_checkpoint}", "served=[onnx-fp16]"): "unknown served variant 'onnx-fp16'",
        (f"checkpoint={tiny_checkpoint}", "int8.activation_type=QInt4x"): "unknown quantization type 'QInt4x'",
        (f"checkpoint={tiny_checkpoint}", "opset=17"): "opset 17 is too old",
    }
    for args, message in refusals.items():
        result = run_script("export.py", *args, "model_store=store", "output=out", cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / "out").exists() and not list((tmp_path / "store").glob("*.mar"))


@pytest.mark.slow
def test_benchmark_writes_json_markdown_and_plot(exported, tmp_path):
    _, config = exported
    bench = InferenceBenchConfig(
        export_dir=config.output,
        batch_sizes=[1, 2],
        threads=[1],
        warmup=1,
        min_seconds=0.0,
        min_calls=3,
        output=str(tmp_path),
    )
    report = run_inference_benchmark(bench, log=lambda _: None)
    names = ["eager", *(v.name for v in exporter.VARIANTS)]
    assert list(report["variants"]) == names
    assert len(report["results"]) == len(names) * 2
    for row in report["results"]:
        assert row["calls"] >= 3 and row["images_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["speedup_vs_onnx"] > 0
    assert {r["speedup_vs_onnx"] for r in report["results"] if r["variant"] == "onnx"} == {1.0}
    assert json.loads((tmp_path / "benchmark.json").read_text()) == report
    table = (tmp_path / "benchmark.md").read_text()
    assert table.count("| onnx-int8 |") == 2 and "| eager |" in table
    with Image.open(io.BytesIO((tmp_path / "benchmark.png").read_bytes())) as plot:
        assert plot.format == "PNG" and plot.width > 600


def test_benchmark_script_names_a_missing_export(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_onnx.py"), str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "export.json not found" in result.stderr


@pytest.mark.slow
def test_export_calibrates_and_stores_a_threshold_per_variant(exported):
    """export.json's calibration and ood sections, calibration.json's thresholds and the ONNX outputs."""
    report, config = exported
    out = Path(config.output)
    stored = json.loads((out / "calibration.json").read_text())
    assert stored["temperature"] == report["calibration"]["temperature"] > 0
    assert stored["score"] == report["ood"]["score"] == "mahalanobis"
    for variant in exporter.VARIANTS:
        facts = report["variants"][variant.name]
        assert stored["thresholds"][variant.file] == facts["ood"]["threshold"]
        assert set(facts["calibration"]) == {"before", "after"} and facts["ood"]["families"]
        assert facts["calibration"]["after"]["top1"] == facts["calibration"]["before"]["top1"]  # T keeps the ranks
    assert set(report["ood"]["scores"]) == {"msp", "energy", "mahalanobis"}
    assert report["ood"]["eager"]["families"]["noise"]["images"] == 12  # the fixture's ood_per_family
    assert set(report["ood"]["targets"]) == {
        "test_accepted_at_least_0.95", "top1_accepted_not_below_top1", "every_family_flagged_at_least_0.90",
        "auroc_at_least_0.95", "ece_after_at_most_0.03",
    }  # fmt: skip
    assert [o.name for o in onnx.load(str(out / "model.int8.onnx")).graph.output] == ["logits", "ood_score"]
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_calibration_gates_hold_quantized_variants_to_eager():
    gates = GateConfig(max_ece_increase=0.02, max_auroc_drop=0.05)

    def report(ece: float, auroc: float) -> dict:
        return {"calibration": {"after": {"ece": ece}}, "auroc": auroc}

    eager = report(0.03, 0.99)
    assert calibration_gate_failures("onnx-int8", True, report(0.05, 0.94), eager, gates) == []  # the limits
    assert calibration_gate_failures("onnx", False, report(0.5, 0.5), eager, gates) == []  # fp32: logits gate
    assert calibration_gate_failures("onnx-int8", True, report(0.06, 0.90), eager, gates) == [
        "onnx-int8 test ECE 0.0600 is 0.0300 above eager's (limit 0.02)",
        "onnx-int8 unknown-detection AUROC 0.9000 is 0.0900 below eager's (limit 0.05)",
    ]


@pytest.mark.slow
def test_the_calibration_and_ood_commands(exported, tmp_path, run_script):
    _, config = exported
    shown = run_script("../leafnet/__main__.py", "calibration", f"export={config.output}")
    assert shown.returncode == 0, shown.stderr
    assert "calibration: T = " in shown.stdout and "unknown (mahalanobis score)" in shown.stdout
    missing = run_script("../leafnet/__main__.py", "calibration", f"export={tmp_path}")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "export.json not found" in missing.stderr
    written = run_script(
        "../leafnet/__main__.py", "ood", f"output={tmp_path / 'ood'}", "per_family=2", "leaves=null",
        "families=[noise,leaf_crops]",
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    written_files = sorted((tmp_path / "ood").rglob("*.png"))
    assert [p.parent.name for p in written_files] == ["noise", "noise"]  # no leaves: the leaf families left out
    assert "ood: 2 images" in written.stdout


def _staged_report(stage: Path) -> dict:
    variants = {}
    for v in exporter.VARIANTS:
        (stage / v.file).write_bytes(b"model")
        variants[v.name] = {"file": v.file, "quantized": v.quantized, "bytes": 5, "sha256": "ab", "test_top1": 0.9}
    return {"variants": variants}


def test_an_unserved_quantized_variant_that_fails_is_withheld_and_the_rest_ship(tmp_path):
    report, lines = _staged_report(tmp_path), []
    reason = "onnx-dynq loses 3 of 198 test images, 1.52 points of test top-1 (limit 1.0 points: 2 images)"
    failures = {v.name: [] for v in exporter.VARIANTS} | {"onnx-dynq": [reason]}
    exporter._withhold_or_fail(failures, ["torchscript", "onnx-int8"], report, tmp_path, lines.append)
    assert not (tmp_path / "model.dynq.onnx").exists() and (tmp_path / "model.int8.onnx").exists()
    assert "onnx-dynq" not in report["variants"] and len(report["variants"]) == len(exporter.VARIANTS) - 1
    assert report["withheld"] == {"onnx-dynq": {"reasons": [reason], "quantized": True, "test_top1": 0.9}}
    assert lines == [f"  withheld (not written): {reason}"]


def test_the_reliability_diagram_leaves_out_a_withheld_variant(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(exporter, "plot_reliability", lambda curves, path, title: drawn.append(sorted(curves)))
    probabilities, targets = np.full((4, 2), 0.5), np.array([0, 1, 0, 1])
    curves = [(label, variant, probabilities) for label, variant in [("before", "eager"), ("after", "eager")]]
    curves.append(("int8", "onnx-int8", probabilities))
    report = _staged_report(tmp_path)
    exporter._plot_reliability(curves, targets, report, tmp_path / "reliability.png")
    report["variants"].pop("onnx-int8")  # withheld
    exporter._plot_reliability(curves, targets, report, tmp_path / "reliability.png")
    assert drawn == [["after", "before", "int8"], ["after", "before"]]


@pytest.mark.parametrize("failing", ["onnx", "onnx-int8"])  # an fp32 variant; a served quantized one
def test_a_failing_fp32_or_served_variant_fails_the_export(tmp_path, failing):
    report = _staged_report(tmp_path)
    failures = {v.name: [] for v in exporter.VARIANTS} | {failing: [f"{failing} is off"]}
    with pytest.raises(LeafnetError, match=f"parity gate failed, nothing written: {failing} is off"):
        exporter._withhold_or_fail(failures, ["torchscript", "onnx-int8"], report, tmp_path, print)
    assert len(report["variants"]) == len(exporter.VARIANTS)
    assert all((tmp_path / v.file).exists() for v in exporter.VARIANTS)
