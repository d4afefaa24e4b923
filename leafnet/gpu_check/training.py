"""The training checks: the real trainer (`leafnet.train.main`) in this process, once in bfloat16 and once in
float16 with channels_last and torch.compile, and the same trainer under torchrun with one process per GPU."""

from __future__ import annotations

import csv
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch

import leafnet
from leafnet.checkpoint import load_checkpoint
from leafnet.config import load_config
from leafnet.errors import LeafnetError
from leafnet.gpu_check.config import DdpSection, TrainSection
from leafnet.gpu_check.report import Skip
from leafnet.train import main as train
from leafnet.train_config import TrainConfig

RUN_SETTINGS = {  # each training check's own settings, on top of the shared ones
    "train_bf16": ["amp.dtype=bfloat16"],
    "train_fp16": ["amp.dtype=float16", "model.channels_last=true"],
    "ddp": ["amp.dtype=bfloat16"],
}


def overrides(name: str, data_root: str, runs: Path, section: TrainSection, device: str) -> list[str]:
    """The key=value options of one training check's run: what `leafnet train` is given."""
    return [
        f"data.root={data_root}",
        f"train.output_dir={runs}",
        f"train.name={name}",
        f"train.device={device}",
        f"model.name={section.model}",
        f"schedule.epochs={section.epochs}",
        "schedule.warmup_epochs=0.5",
        f"data.batch_size={section.batch_size}",
        f"data.eval_batch_size={2 * section.batch_size}",
        f"data.workers={section.workers}",
        "data.input_size=0",  # the prepared size
        f"train.max_steps_per_epoch={section.max_steps_per_epoch}",
        "logging.tensorboard=false",
        "logging.image_grid=false",
        "logging.confusion_matrix=false",
        *RUN_SETTINGS[name],
    ]


def train_in_process(name: str, data_root: str, runs: Path, section: TrainSection, device: str) -> dict:
    """One run of the trainer in this process; its throughput, accuracy and checkpoint."""
    settings = overrides(name, data_root, runs, section, device)
    if name == "train_fp16":
        if device != "cuda":
            raise Skip("device=cpu: float16 with a GradScaler, channels_last and torch.compile is the CUDA path")
        settings.append(f"model.compile={str(section.compile).lower()}")
    elif device == "cuda" and not _native_bf16():
        raise Skip(f"{torch.cuda.get_device_name()} has no native bfloat16 (compute capability below 8.0)")
    shutil.rmtree(runs / name, ignore_errors=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = train(load_config(TrainConfig, settings))
    details = _run_details(runs / name, summary)
    details["settings"] = [s for s in settings if s.startswith(("amp.", "model."))]
    if device == "cuda":
        details["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if name == "train_fp16":
        scaler = load_checkpoint(runs / name / "checkpoints" / "last.pt")["scaler"]
        if not scaler:
            raise LeafnetError("the float16 run saved no GradScaler state: the scaler did not run")
        details["grad_scaler_scale"] = scaler["scale"]
    return details


def train_under_torchrun(data_root: str, runs: Path, section: TrainSection, ddp: DdpSection, device: str) -> dict:
    """`python -m torch.distributed.run --standalone --nproc_per_node=N -m leafnet train ...` with nccl on CUDA
    (one process per visible GPU) and gloo on the CPU."""
    processes = ddp.processes or (torch.cuda.device_count() if device == "cuda" else 2)
    backend = "nccl" if device == "cuda" else "gloo"
    settings = [*overrides("ddp", data_root, runs, section, device), f"distributed.backend={backend}"]
    settings.append("distributed.timeout_s=120")  # a hung collective fails in 2 minutes, not torch's half hour
    if device == "cuda" and not _native_bf16():  # bfloat16 autocast refuses such a GPU: float16, as train_fp16
        settings = [("amp.dtype=float16" if s == "amp.dtype=bfloat16" else s) for s in settings]
    if device == "cpu":
        settings.append("train.threads=1")  # the processes share the cores
    shutil.rmtree(runs / "ddp", ignore_errors=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "leafnet", "train", *settings]
    package_root = str(Path(leafnet.__file__).resolve().parents[1])  # this leafnet, in every process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    # A session of its own, so a last-resort kill reaches whatever is left in it. torchrun starts each worker
    # in a session of its own too: only torchrun, asked with SIGTERM, stops its workers (then SIGKILLs them).
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=ddp.timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # torchrun's agent shuts its workers down, then exits
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
            raise LeafnetError(f"torchrun with {processes} process(es) did not finish in {ddp.timeout_s} s") from None
    if process.returncode != 0:
        raise LeafnetError(f"torchrun exited {process.returncode}: {culprit(stderr or stdout)}")
    if f"{processes} process(es)" not in stdout:
        raise LeafnetError(f"the run's log does not report {processes} process(es): {culprit(stdout)}")
    details = {"processes": processes, "backend": backend, "command": shlex.join(["python", *command[1:]])}
    details["settings"] = [s for s in settings if s.startswith(("amp.", "distributed."))]
    details |= _run_details(runs / "ddp", None)
    details["process_group"] = processes > 1
    if processes == 1:
        details["note"] = (
            "one process: leafnet makes no process group for a world of 1 (leafnet/distributed.py), so no "
            f"{backend} collective ran; two or more GPUs exercise them"
        )
    return details


def culprit(output: str) -> str:
    """The line of a failed run's output that names what went wrong: the last error line, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and set(line.strip()) - set("=-*^~ ")]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def _run_details(run_dir: Path, summary: dict | None) -> dict:
    """Per-epoch throughput and accuracy from the run's metrics.csv; non-finite values fail the check."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LeafnetError(f"{run_dir / 'metrics.csv'} has no epoch")
    epochs = [
        {
            "epoch": int(row["epoch"]),
            "images_per_s": round(float(row["images_per_s"]), 1),
            "train_loss": round(float(row["train_loss"]), 4),
            "val_top1": round(float(row["val_top1"]), 4) if row.get("val_top1") else None,
            "seconds": round(float(row["epoch_seconds"]), 2),
        }
        for row in rows
    ]
    last = epochs[-1]
    if not all(math.isfinite(e["train_loss"]) for e in epochs) or last["val_top1"] is None:
        raise LeafnetError(f"non-finite loss or no validation in {run_dir / 'metrics.csv'}")
    checkpoint = run_dir / "checkpoints" / "best.pt"
    classes = len(load_checkpoint(checkpoint)["class_names"])
    return {
        # the last epoch's: the first one carries start-up costs (cuDNN autotuning, torch.compile)
        "images_per_s": last["images_per_s"],
        "val_top1": last["val_top1"],
        "best_val_top1": round(summary["best_val_top1"], 4) if summary else max(e["val_top1"] or 0 for e in epochs),
        "chance_top1": round(1 / classes, 4),
        "epochs": epochs,
        "checkpoint": str(checkpoint),
    }


def _native_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older signature: no emulation to tell apart
        return torch.cuda.is_bf16_supported()
