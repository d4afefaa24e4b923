"""`leafnet gpu-check` (scripts/gpu_check.sh) where no GPU is: its one-line refusal without CUDA, and every check
run on the CPU (device=cpu) on tiny generated data, into one JSON file. The CUDA paths themselves need a GPU
machine: docs/gpu.md says what has run where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from leafnet.gpu_check.config import CHECKS
from leafnet.gpu_check.report import FAILED, OK, SKIPPED, Report, Skip
from leafnet.gpu_check.training import culprit
from tests.conftest import REPO

WRAPPER = REPO / "scripts" / "gpu_check.sh"
TINY = [  # 99 species x 4 images at 32 px, a few steps per epoch, few timed calls: the code paths, quickly
    "data.per_species=4",
    "data.size=32",
    "train.batch_size=16",
    "train.max_steps_per_epoch=3",
    "train.workers=0",
    "parity.images=16",
    "parity.batch_size=8",
    "parity.warmup=1",
    "parity.runs=3",
    "serving.repeats=2",
    "export_ood_per_family=4",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the check runs instead of refusing")
def test_without_cuda_the_check_refuses_in_one_line_unless_told_device_cpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    output = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", str(WRAPPER), f"output={output}"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device"), result.stderr
    assert "device=cpu" in lines[0] and result.stdout == ""
    assert not output.exists()  # nothing ran, nothing written


def test_unknown_options_and_checks_fail_in_one_line(run_script, tmp_path):
    for args, fragment in [
        (["device=cpu", "checks=[train_bf16,gpu]"], "unknown check 'gpu'"),
        (["device=tpu"], "device must be cuda or cpu"),
        (["trian.epochs=1"], "unknown config key"),
    ]:
        result = run_script("../leafnet/__main__.py", "gpu-check", f"output={tmp_path / 'r.json'}", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr)
    assert not (tmp_path / "r.json").exists()


def test_a_report_section_is_ok_failed_or_skipped_with_one_line_and_the_rest_still_runs(tmp_path):
    path = tmp_path / "r.json"
    report = Report(path, {"environment": {}}, ["a", "b", "c", "d"], always=("data",))
    assert report.run("data", lambda: {"root": "x"}) == {"root": "x"}
    assert report.run("a", lambda: 1 / 0) is None
    report.run("b", lambda: {"never": "run"}, needs=("a",))
    report.run("c", lambda: (_ for _ in ()).throw(Skip("needs onnxruntime-gpu")))
    report.run("d", lambda: {"fine": True}, needs=("data",))
    report.run("e", lambda: {"not": "selected"})
    written = json.loads(path.read_text())  # written after every section, not only at the end
    checks = written["checks"]
    assert checks["data"]["status"] == OK and checks["data"]["reason"] is None and checks["data"]["root"] == "x"
    assert checks["a"] == {**checks["a"], "status": FAILED, "reason": "ZeroDivisionError: division by zero"}
    assert checks["b"]["status"] == SKIPPED and checks["b"]["reason"] == "needs the a check, which was failed"
    assert checks["c"]["status"] == SKIPPED and checks["c"]["reason"] == "needs onnxruntime-gpu"
    assert checks["d"]["status"] == OK and checks["d"]["fine"] is True
    assert checks["e"]["status"] == SKIPPED and checks["e"]["reason"].startswith("not selected")
    assert all(isinstance(section["seconds"], float) for section in checks.values())
    summary = report.finish()["summary"]
    assert summary == {OK: ["d", "data"], FAILED: ["a"], SKIPPED: ["b", "c", "e"]}


def test_a_failed_torchrun_is_named_by_its_error_line():
    stderr = "Traceback (most recent call last):\n  File x\nRuntimeError: NCCL error: unhandled cuda error\n====\n"
    assert culprit(stderr) == "RuntimeError: NCCL error: unhandled cuda error"
    assert culprit("error: data.root=x is not a prepared data directory\n").startswith("error: data.root=x")
    assert culprit("") == "no output"


def test_a_failed_check_fails_the_run_and_leaves_no_process_behind(run_script, tmp_path):
    """torchrun past its time: the ddp section fails with one line, the exit status is 1, its workers are gone."""
    output = tmp_path / "gpu_check.json"
    args = ["device=cpu", f"output={output}", "checks=[ddp]", "ddp.timeout_s=1", "data.per_species=3", "data.size=32"]
    result = run_script("../leafnet/__main__.py", "gpu-check", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    checks = json.loads(output.read_text())["checks"]
    assert checks["ddp"]["status"] == FAILED
    assert checks["ddp"]["reason"] == "LeafnetError: torchrun with 2 process(es) did not finish in 1 s"
    assert checks["data"]["status"] == OK  # always: the checks' input
    assert checks["train_bf16"] == {"status": SKIPPED, "reason": "not selected (checks=ddp)", "seconds": 0.0}
    assert "ddp: failed: LeafnetError: torchrun" in result.stdout
    deadline = time.monotonic() + 30
    while left := [p for p in psutil.process_iter(["cmdline", "status"]) if _runs_in(p, tmp_path)]:
        assert time.monotonic() < deadline, f"still running after the run: {left}"
        time.sleep(0.2)


def _runs_in(process: psutil.Process, folder: Path) -> bool:
    """A live process whose command line names `folder` (torchrun's workers name the data and run folders)."""
    alive = process.info["status"] != psutil.STATUS_ZOMBIE
    return alive and str(folder) in " ".join(process.info["cmdline"] or [])


@pytest.mark.slow
def test_every_check_runs_on_the_cpu_into_one_json_file(run_script, tmp_path):
    output = tmp_path / "out" / "gpu_check.json"
    result = run_script("../leafnet/__main__.py", "gpu-check", "device=cpu", f"output={output}", *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"-> {output}" in result.stdout
    document = json.loads(output.read_text())
    assert set(document) == {"format", "environment", "config", "work_dir", "checks", "summary", "seconds"}
    assert document["environment"]["device"] == "cpu" and document["environment"]["ran_on_gpu"] is False
    assert "CPUExecutionProvider" in document["environment"]["onnxruntime_providers"]
    assert document["work_dir"] == str(output.parent / "work")
    checks = document["checks"]
    assert list(checks) == ["data", *CHECKS]
    for name, section in checks.items():  # every check ran, or says why not
        assert section["status"] in (OK, SKIPPED), (name, section)
        assert (section["reason"] is None) == (section["status"] == OK), (name, section)
        assert isinstance(section["seconds"], float) and section["seconds"] >= 0
    assert document["summary"] == {OK: sorted(set(checks) - {"train_fp16"}), FAILED: [], SKIPPED: ["train_fp16"]}
    assert "device=cpu" in checks["train_fp16"]["reason"]  # float16 + GradScaler + compile: the CUDA path

    assert checks["data"]["generated"] and checks["data"]["classes"] == 99 and checks["data"]["image_size"] == 32
    bf16 = checks["train_bf16"]
    assert bf16["images_per_s"] > 0 and 0 <= bf16["val_top1"] <= 1 and bf16["chance_top1"] == round(1 / 99, 4)
    assert [e["epoch"] for e in bf16["epochs"]] == [0, 1] and "amp.dtype=bfloat16" in bf16["settings"]
    ddp = checks["ddp"]
    assert (ddp["processes"], ddp["backend"], ddp["process_group"]) == (2, "gloo", True)
    assert "torch.distributed.run" in ddp["command"] and ddp["images_per_s"] > 0
    assert checks["evaluate"]["device"] == "cpu" and checks["evaluate"]["images"] == checks["data"]["test_images"]
    assert checks["export"]["archives"] == ["leafnet.mar"]
    torchscript = checks["parity_torchscript"]
    assert torchscript["vs_eager"]["max_abs_logit_diff"] < 1e-3 and torchscript["vs_eager"]["top1_agreement"] == 1
    assert {"torchscript", "eager"} == set(torchscript["latency"]) and torchscript["speedup_vs_eager"] > 0
    onnx = checks["parity_onnxruntime"]["providers"]["CPUExecutionProvider"]
    assert onnx["vs_eager_on_cpu"]["max_abs_logit_diff"] < 1e-3 and onnx["latency_ms"] > 0
    serving = checks["serving"]
    assert serving["handler_device"] == "cpu" and serving["batch_size"] == 4  # the archive's batchSize
    assert serving["top1_agreement_with_eager"] == 1.0 and serving["latency_ms"] > 0
