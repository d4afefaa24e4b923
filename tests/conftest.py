"""Shared fixtures: a small synthetic raw set and its prepared form, built once per session."""

from __future__ import annotations

import logging
import os
import random
import runpy
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

import leafnet.export.exporter as exporter
from leafnet.checkpoint import load_checkpoint
from leafnet.config import load_config
from leafnet.data.prepare import PrepareConfig, prepare
from leafnet.data.species import SPECIES
from leafnet.data.synthetic import SyntheticConfig, render_leaf
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.export.archive import unpack_archive
from leafnet.export.config import CalibrationConfig, ExportConfig
from leafnet.models import model_from_checkpoint
from leafnet.train import main as train
from leafnet.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# Hypothesis's 200 ms deadline turns a slow moment of a shared 2-core machine into a failure; what the
# property tests prove does not depend on time, so no example has a deadline.
settings.register_profile("leafnet", deadline=None)
settings.load_profile("leafnet")

# The slowest files, slowest first (from `pytest --durations`): collected first, so `make test`'s two workers
# (pytest-xdist, a file at a time, --no-loadscope-reorder keeping this order) start on the long files and
# share out the short ones at the end, instead of one worker finishing a long file alone.
SLOWEST_FIRST = (
    "test_pipeline.py",
    "test_packaging.py",
    "test_train.py",
    "test_proxy.py",
    "test_run_timing.py",
    "test_gpu_check.py",
    "test_export.py",
    "test_serving.py",
    "test_handler.py",
    "test_docker.py",
    "test_finetune.py",
    "test_bench_finetune.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# How long a test waits for a TorchServe to load its models, whoever started it: a cold start on a busy
# 2-core machine (JVM, two workers importing onnxruntime) has taken over a minute.
SERVER_READY_TIMEOUT_S = 180

_HANDED_OUT: set[int] = set()
_PORTS = random.Random()  # seeded from os.urandom: two test runs at once start apart


def _port_slice() -> tuple[int, int]:
    """This test process's share of the ports below the ephemeral range: xdist workers are separate
    processes, each with its own record of what it handed out, and a port one of them has handed out but
    not yet bound passes the other's probe. Disjoint slices keep two workers' servers apart."""
    high = _ephemeral_low() - 1
    low = min(20000, high - 1000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... under xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    width = (high - low + 1) // max(count, 1)
    return low + index * width, low + (index + 1) * width - 1


def free_port() -> int:
    """A loopback TCP port that is free now, for a server started a moment later.

    The kernel's port-0 answer comes from the ephemeral range, where every outgoing connection of this
    machine also takes its local port: one of them could take it before the server binds. Ports below
    that range are only ever taken by an explicit bind; none is handed out twice in a session, and each
    xdist worker draws from its own slice (_port_slice), so no two servers of a test run collide.
    """
    low, high = _port_slice()
    for _ in range(1000):
        port = _PORTS.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high}, below the ephemeral range")


# 4 images per species with 25%/25% val/test fractions: 2 train, 1 val, 1 test per class.
TINY_SYNTHETIC = SyntheticConfig(per_species=4, seed=3, min_blade_px=60, max_blade_px=120)


def tiny_prepare_config(raw: Path, out: Path, **overrides) -> PrepareConfig:
    return PrepareConfig(
        source="synthetic",
        input=str(raw),
        output=str(out),
        size=48,
        val_fraction=0.25,
        test_fraction=0.25,
        workers=1,
        synthetic=TINY_SYNTHETIC,
        **overrides,
    )


@pytest.fixture(scope="session")
def prepared_synthetic(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("synthetic")
    config = tiny_prepare_config(base / "raw", base / "processed")
    prepare(config, log=lambda _: None)
    return base / "processed"


SPECIES_USED = ("Salix_Integra", "Cercis_Integra", "Acer_Integrum_Profundum", "Quercus_Lobata_Incisa")


@pytest.fixture(scope="session")
def tiny_leaves(tmp_path_factory) -> Path:
    """4 clearly different species x 10 images, prepared at 32 px: 6 train / 2 val / 2 test each."""
    base = tmp_path_factory.mktemp("tiny_leaves")
    config = SyntheticConfig(min_blade_px=60, max_blade_px=90)
    for name in SPECIES_USED:
        species = next(s for s in SPECIES if s.name == name)
        (base / "raw" / name).mkdir(parents=True)
        for k in range(10):
            render_leaf(species, np.random.default_rng([5, k]), config).save(base / "raw" / name / f"{k}.png")
    prepare(
        PrepareConfig(
            source="imagefolder",
            input=str(base / "raw"),
            output=str(base / "data"),
            size=32,
            val_fraction=0.2,
            test_fraction=0.2,
            workers=1,
        ),
        log=lambda _: None,
    )
    return base / "data"


def tiny_config(data: Path, out: Path, *overrides: str) -> TrainConfig:
    base = [
        f"data.root={data}",
        f"train.output_dir={out}",
        "train.name=run",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "data.workers=0",
        "schedule.epochs=2",
        "schedule.warmup_epochs=0.5",
        "train.threads=1",
        "data.input_size=0",  # the prepared size (the default is the demo recipe's 56 px)
        # The raw weights, in float32 on any machine: a handful of steps is no run for an average of
        # weights (the demo recipe's EMA), and tests compare metrics across runs and with evaluate.
        "ema.enabled=false",
        "amp.dtype=none",
    ]
    return load_config(TrainConfig, [*base, *overrides])


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_leaves, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_run")
    no_aug = ["data.augment.rotation_deg=0", "data.augment.scale=[1.0,1.0]", "data.augment.hflip=0"]
    train(tiny_config(tiny_leaves, out, "model.name=resnet10t", "schedule.epochs=20", "optim.lr=0.003", *no_aug))
    return out / "run" / "checkpoints" / "best.pt"


def export_config(checkpoint: Path, base: Path, **overrides) -> ExportConfig:
    return ExportConfig(
        checkpoint=str(checkpoint),
        output=str(base / "exports" / "tiny"),
        model_store=str(base / "model_store"),
        workers=0,
        threads=1,
        **{"calibration": CalibrationConfig(ood_per_family=12), **overrides},  # 108 generated images: enough here
    )


@pytest.fixture(scope="session")
def exported(tiny_checkpoint, tmp_path_factory) -> tuple[dict, ExportConfig]:
    config = export_config(tiny_checkpoint, tmp_path_factory.mktemp("export"))
    return exporter.export_checkpoint(config, log=lambda _: None), config


def offline_top1(checkpoint_path: str, images: list[Path]) -> list[int]:
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    transform = eval_transform(PreprocessSpec(**checkpoint["preprocess"]))
    with torch.no_grad():
        return [model(transform(Image.open(p).convert("RGB"))[None]).argmax().item() for p in images]


def unpack(archive: Path, into: Path) -> tuple[Path, dict]:
    """A .mar's files, extracted as TorchServe does for a worker, and its manifest."""
    return into, unpack_archive(archive, into)


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width x height: a decompression bomb's opening."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def run_script(monkeypatch, capsys) -> Callable[..., subprocess.CompletedProcess]:
    """Runs `python scripts/<name> args...` in this process (its `__main__` block, argv, working directory,
    exit status, stdout and stderr): each CLI refusal checked this way saves the 5-10 s a fresh
    interpreter takes to import torch. Tests that need a real process (signals, torchrun) spawn one."""

    def run(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        script = REPO / "scripts" / name
        leafnet_logger = logging.getLogger("leafnet")  # the script configures it: put it back afterwards
        patch_logger = (list(leafnet_logger.handlers), leafnet_logger.level, leafnet_logger.propagate)
        with monkeypatch.context() as patch:
            patch.setattr(sys, "argv", [str(script), *args])
            if cwd is not None:
                patch.chdir(cwd)
            capsys.readouterr()  # drop what the test printed before
            try:
                runpy.run_path(str(script), run_name="__main__")
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            out = capsys.readouterr()
        leafnet_logger.handlers[:], leafnet_logger.level, leafnet_logger.propagate = patch_logger
        return subprocess.CompletedProcess([name, *args], code, out.out, out.err)

    return run
