"""Training, resume, DDP, AMP, profiling, TensorBoard and evaluation on tiny data (32 px, 4 classes)."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import leafnet.checkpoint_writer
import leafnet.train
from leafnet.checkpoint import load_checkpoint
from leafnet.errors import LeafnetError
from leafnet.evaluation import EvalConfig, evaluate_checkpoint
from leafnet.train import main as train
from tests.conftest import REPO, SPECIES_USED, free_port, offline_top1, tiny_config


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_overfits_a_handful_of_batches(tiny_leaves, tmp_path):
    no_aug = [
        "data.augment.rotation_deg=0",
        "data.augment.scale=[1.0,1.0]",
        "data.augment.ratio=[1.0,1.0]",
        "data.augment.hflip=0",
    ]
    cfg = tiny_config(
        tiny_leaves,
        tmp_path,
        *no_aug,
        "schedule.epochs=15",
        "optim.lr=0.003",
        "optim.label_smoothing=0",
        "optim.weight_decay=0",
    )
    train(cfg)
    report = evaluate_checkpoint(
        EvalConfig(checkpoint=str(tmp_path / "run/checkpoints/last.pt"), split="train", workers=0), log=lambda _: None
    )
    assert report["top1"] == 1.0


@pytest.mark.slow
def test_resume_reaches_the_same_metrics_as_an_uninterrupted_run(tiny_leaves, tmp_path):
    common = ("schedule.epochs=3", "data.workers=2")  # persistent workers must not break exactness
    train(tiny_config(tiny_leaves, tmp_path / "a", *common))
    train(tiny_config(tiny_leaves, tmp_path / "b", *common, "train.stop_after_epoch=1"))  # "killed" after epoch 1
    assert len(metrics(tmp_path / "b/run")) == 2
    train(tiny_config(tiny_leaves, tmp_path / "b", *common, "train.resume=auto"))
    a, b = metrics(tmp_path / "a/run"), metrics(tmp_path / "b/run")
    assert [r["epoch"] for r in b] == ["0", "1", "2"]
    for column in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
        assert [r[column] for r in a] == [r[column] for r in b], column
    last_a = load_checkpoint(tmp_path / "a/run/checkpoints/last.pt")["model"]
    last_b = load_checkpoint(tmp_path / "b/run/checkpoints/last.pt")["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_resume_names_numerics_that_differ_from_the_run_that_wrote_the_checkpoint(tiny_leaves, tmp_path, caplog):
    """Defaults change and `auto` resolves per machine: a resume says so, and how to go on as it started."""
    first = ("schedule.epochs=2", "train.stop_after_epoch=0", "data.augment.implementation=timm", "amp.dtype=none")
    train(tiny_config(tiny_leaves, tmp_path, *first))
    with caplog.at_level("WARNING", logger="leafnet.train"):
        train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=2", "amp.dtype=bfloat16", "train.resume=auto"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "resuming" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "amp.dtype none -> bfloat16, data.augment.implementation timm -> supersampled" in warnings[0]
    assert warnings[0].endswith("pass amp.dtype=none data.augment.implementation=timm to go on as it started")
    caplog.clear()
    with caplog.at_level("WARNING", logger="leafnet.train"):  # the same choices: nothing to say
        train(tiny_config(tiny_leaves, tmp_path / "b", "schedule.epochs=2", "train.stop_after_epoch=0"))
        train(tiny_config(tiny_leaves, tmp_path / "b", "schedule.epochs=2", "train.resume=auto"))
    assert not [r for r in caplog.records if "resuming" in r.getMessage()]


def test_a_resumed_checkpoint_that_did_not_record_its_choices_took_staged_for_auto(tiny_leaves, tmp_path, caplog):
    """Checkpoints record what `auto` resolved to; one written before they did (2026-12-05) trained with the
    staged pipeline under auto, which now takes the supersampled warp: the resume says so."""
    train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=2", "train.stop_after_epoch=0"))
    last = tmp_path / "run/checkpoints/last.pt"
    checkpoint = load_checkpoint(last)
    assert checkpoint["numerics"]["data.augment.implementation"] == "supersampled"
    del checkpoint["numerics"]
    torch.save(checkpoint, last)
    with caplog.at_level("WARNING", logger="leafnet.train"):
        train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=2", "train.resume=auto"))
    warnings = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert len(warnings) == 1 and "data.augment.implementation staged -> supersampled" in warnings[0], warnings


# Runs scripts/train.py as __main__ in a fresh process whose Nth optimizer step sends SIGTERM to the
# process itself: a real signal through the real handler, at a known step (an outside kill would land
# at whatever step the machine's load allows).
SIGTERM_AT_STEP = """
import os, runpy, signal, sys
import leafnet.engine

after, steps = int(os.environ["SIGTERM_AFTER_STEPS"]), 0
optimizer_step = leafnet.engine._optimizer_step

def step_then_sigterm(*args):
    global steps
    optimizer_step(*args)
    steps += 1
    if steps == after:
        os.kill(os.getpid(), signal.SIGTERM)

leafnet.engine._optimizer_step = step_then_sigterm
runpy.run_path(os.path.join("scripts", "train.py"), run_name="__main__")
"""


def train_until_sigterm(cfg, after_steps: int, env: dict | None = None) -> subprocess.Popen:
    """Starts the run of `cfg` in a new process that gets SIGTERM after `after_steps` optimizer steps."""
    config = Path(cfg.train.output_dir) / "config-under-test.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), config)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SIGTERM_AFTER_STEPS": str(after_steps), **(env or {})}
    command = [sys.executable, "-c", SIGTERM_AT_STEP, "--config", str(config)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_saves_mid_epoch_and_resume_ends_like_an_uninterrupted_run(tiny_leaves, tmp_path):
    common = ("schedule.epochs=3", "data.workers=2")  # 3 batches per epoch; workers must not break exactness
    train(tiny_config(tiny_leaves, tmp_path / "a", *common))
    process = train_until_sigterm(tiny_config(tiny_leaves, tmp_path / "b", *common), after_steps=4)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    last = tmp_path / "b/run/checkpoints/last.pt"
    assert f"SIGTERM: stopped in epoch 2/3 after batch 1/3, saved {last}; continue with train.resume=auto" in out
    stopped = load_checkpoint(last)
    assert stopped["epoch"] == 0 and stopped["interrupted"]["epoch"] == 1 and stopped["interrupted"]["batches"] == 1
    assert len(metrics(tmp_path / "b/run")) == 1  # the unfinished epoch is not logged

    with pytest.raises(LeafnetError, match=r"stopped mid-epoch with \{'batch_size': 8, .*use the same data.batch_size"):
        train(tiny_config(tiny_leaves, tmp_path / "b", *common, "data.batch_size=4", "train.resume=auto"))
    handler = signal.getsignal(signal.SIGTERM)
    train(tiny_config(tiny_leaves, tmp_path / "b", *common, "train.resume=auto"))
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back
    a, b = metrics(tmp_path / "a/run"), metrics(tmp_path / "b/run")
    assert [r["epoch"] for r in b] == ["0", "1", "2"]
    for column in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
        assert [r[column] for r in a] == [r[column] for r in b], column
    last_a = load_checkpoint(tmp_path / "a/run/checkpoints/last.pt")
    last_b = load_checkpoint(last)
    assert last_b["interrupted"] is None
    for key in ("model", "optimizer", "scheduler"):
        assert_equal_states(last_a[key], last_b[key], key)


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(tiny_leaves, tmp_path):
    """Only rank 1 is signalled: rank 0 must stop at the same step (or it would wait in the next gradient
    all-reduce until the timeout), both exit 143, and resume=auto on two processes finishes the run."""
    args = ("data.batch_size=4", "schedule.epochs=3", "logging.tensorboard=false", "distributed.timeout_s=60")
    cfg = tiny_config(tiny_leaves, tmp_path, *args)
    port = str(free_port())

    def ranks(after_steps: dict[int, int]) -> list[subprocess.Popen]:
        env = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        env["OMP_NUM_THREADS"] = "1"
        return [
            train_until_sigterm(cfg, after_steps[rank], {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
            for rank in (0, 1)
        ]

    stopped = finish(ranks({0: 0, 1: 1}))  # 0 = never
    assert [code for _, _, code in stopped] == [143, 143], stopped[0][1][-2000:] + stopped[1][1][-2000:]
    last = tmp_path / "run/checkpoints/last.pt"
    assert "SIGTERM: stopped in epoch" in stopped[0][0]
    interrupted = load_checkpoint(last)["interrupted"]
    assert interrupted["geometry"] == {"batch_size": 4, "world_size": 2, "accumulate": 1}
    position = (interrupted["epoch"], interrupted["batches"])
    assert (0, 1) <= position < (2, 3)  # the step rank 1 was signalled after, or a later one (DDP polls sparsely)
    assert interrupted["sums"][2] == 2 * 4 * interrupted["batches"]  # both ranks' images, exactly

    cfg = tiny_config(tiny_leaves, tmp_path, *args, "train.resume=auto")
    resumed = finish(ranks({0: 0, 1: 0}))
    assert [code for _, _, code in resumed] == [0, 0], resumed[0][1][-2000:] + resumed[1][1][-2000:]
    assert f"after batch {interrupted['batches']})" in resumed[0][0]
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == ["0", "1", "2"]


def finish(processes: list[subprocess.Popen], timeout: float = 180) -> list[tuple[str, str, int]]:
    """(stdout, stderr, exit status) of each process; none is left running if one of them hangs."""
    try:
        return [(*process.communicate(timeout=timeout), process.returncode) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def assert_equal_states(a, b, where: str) -> None:
    """Nested state dicts equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_states(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_on_two_gloo_processes_reports_exact_validation_metrics(tiny_leaves, tmp_path):
    args = [f"data.root={tiny_leaves}", f"train.output_dir={tmp_path}", "train.name=ddp", "data.batch_size=4"]
    args += [
        "data.eval_batch_size=3",
        "data.workers=0",
        "schedule.epochs=2",
        "train.threads=1",
        "logging.tensorboard=false",
        "amp.dtype=none",  # evaluate's float32 is what the ranks' validation must reproduce
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "scripts/train.py"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    logged = metrics(tmp_path / "ddp")[-1]
    # The same checkpoint evaluated by one process: 8 val images split 4/4 across ranks in DDP.
    single = evaluate_checkpoint(
        EvalConfig(
            checkpoint=str(tmp_path / "ddp/checkpoints/last.pt"),
            split="val",
            workers=0,
            output=str(tmp_path / "single"),
        ),
        log=lambda _: None,
    )
    assert float(logged["val_top1"]) == pytest.approx(single["top1"], abs=1e-6)
    assert float(logged["val_loss"]) == pytest.approx(single["loss"], abs=1e-4)
    assert single["count"] == 8


def record_conv_output_dtypes(monkeypatch) -> set[tuple[bool, torch.dtype]]:
    """(training?, dtype) of every convolution output of the models the next run creates."""
    seen: set[tuple[bool, torch.dtype]] = set()
    create = leafnet.train.create_model

    def hooked(config, num_classes):
        model = create(config, num_classes)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda m, _, output: seen.add((m.training, output.dtype)))
        return model

    monkeypatch.setattr(leafnet.train, "create_model", hooked)
    return seen


@pytest.mark.slow
def test_bfloat16_autocast_profiler_and_tensorboard_tags(tiny_leaves, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dtypes = record_conv_output_dtypes(monkeypatch)
    profile = ["profile.enabled=true", "profile.wait=1", "profile.warmup=1", "profile.active=1"]
    summary = train(tiny_config(tiny_leaves, tmp_path, "amp.dtype=bfloat16", *profile))
    assert np.isfinite(summary["val_loss"])
    assert dtypes == {(True, torch.bfloat16), (False, torch.bfloat16)}  # training and validation both ran bf16
    run_dir = tmp_path / "run"
    traces = list((run_dir / "profile").glob("*.pt.trace.json"))
    assert traces
    events = {e.get("name") for e in json.loads(traces[0].read_text())["traceEvents"]}
    assert {"forward", "backward", "optimizer"} <= events
    events_file = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events_file.Tags()
    expected = {
        "train/loss",
        "train/top1",
        "val/loss",
        "val/top1",
        "val/top5",
        "lr",
        "perf/images_per_s",
        "perf/data_wait_fraction",
    }
    assert expected <= set(tags["scalars"])
    assert {"train/augmented_samples", "val/confusion_matrix"} <= set(tags["images"])
    assert [s.step for s in events_file.Scalars("val/top1")] == [0, 1]
    saved = (run_dir / "config.yaml").read_text()
    assert "dtype: bfloat16" in saved and f"root: {tiny_leaves}" in saved
    # hparams: the run's settings and its best val top-1, in the HPARAMS tab's own run
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams_run = EventAccumulator(str(run_dir / "tb" / "hparams")).Reload()
    content = hparams_run.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    recorded = {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}
    resolved = OmegaConf.load(run_dir / "config.yaml")
    assert recorded == {
        "model": resolved.model.name,
        "lr": pytest.approx(resolved.optim.lr),
        "batch_size": 8,
        "epochs": 2,
        "input_size": 32,
        "amp": "bfloat16",
        "world_size": 1,
    }
    [best] = hparams_run.Scalars("hparam/best_val_top1")
    assert best.value == pytest.approx(max(float(r["val_top1"]) for r in metrics(run_dir)))
    assert best.value == pytest.approx(summary["best_val_top1"])


@pytest.mark.slow
def test_float16_trains_with_a_grad_scaler_whose_state_is_checkpointed(tiny_leaves, tmp_path, monkeypatch):
    dtypes = record_conv_output_dtypes(monkeypatch)
    train(tiny_config(tiny_leaves, tmp_path, "amp.dtype=float16", "schedule.epochs=1", "logging.tensorboard=false"))
    assert (True, torch.float16) in dtypes
    scaler = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["scaler"]
    assert scaler is not None and scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0


@pytest.mark.slow
def test_best_checkpoint_is_the_epoch_with_the_highest_val_top1(tiny_leaves, tmp_path, monkeypatch):
    """Validation scores scripted per epoch (the model is real): best.pt holds the first epoch that
    reached the maximum, not the last nor the lowest-loss one."""
    scripted = iter([0.25, 0.75, 0.5, 0.75])
    evaluate = leafnet.train.evaluate
    monkeypatch.setattr(leafnet.train, "evaluate", lambda *a, **k: replace(evaluate(*a, **k), top1=next(scripted)))
    train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=4", "logging.tensorboard=false"))
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert best["epoch"] == 1 and best["best_top1"] == 0.75
    assert [float(r["val_top1"]) for r in metrics(tmp_path / "run")] == [0.25, 0.75, 0.5, 0.75]
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["epoch"] == 3


def test_weight_decay_spares_norms_and_biases(tiny_leaves, tmp_path):
    from leafnet.distributed import DistInfo
    from leafnet.train import Trainer

    cfg = tiny_config(tiny_leaves, tmp_path, "model.name=resnet10t", "optim.weight_decay=0.05")
    trainer = Trainer(cfg, DistInfo(), torch.device("cpu"))
    decay = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    named = dict(trainer.model.named_parameters())
    assert len(decay) == len(named)  # every parameter is optimised, once
    for name, parameter in named.items():
        expected = 0.0 if parameter.ndim <= 1 else 0.05  # biases and norm scales/shifts are 1-D
        assert decay[id(parameter)] == expected, name
    assert any(p.ndim <= 1 for p in named.values()) and any(p.ndim > 1 for p in named.values())


@pytest.mark.slow
def test_a_nan_loss_keeps_the_last_good_checkpoint(tiny_leaves, tmp_path, monkeypatch):
    """Epoch 0 trains normally; epoch 1's weights turn NaN: training stops naming the checkpoint, which is
    still the one epoch 0 wrote, byte for byte."""
    real_epoch = leafnet.train.train_one_epoch

    def poisoned(model, *args, **kwargs):
        if args[6] == 1:  # the epoch argument
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real_epoch(model, *args, **kwargs)

    monkeypatch.setattr(leafnet.train, "train_one_epoch", poisoned)
    checkpoints = tmp_path / "run" / "checkpoints"
    written = {}
    write = leafnet.checkpoint_writer.write_checkpoint

    def remembering_write(path, payload, also=(), remove=()):
        write(path, payload, also, remove)
        for name in (path, *also):
            written[Path(name).name] = Path(name).read_bytes()

    monkeypatch.setattr(leafnet.checkpoint_writer, "write_checkpoint", remembering_write)
    with pytest.raises(LeafnetError, match=f"the last good checkpoint is {re.escape(str(checkpoints / 'last.pt'))}"):
        train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=3", "logging.tensorboard=false"))
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 0
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == written  # nothing written after epoch 0


@pytest.mark.slow
def test_evaluate_needs_only_the_checkpoint(tiny_leaves, tmp_path):
    train(tiny_config(tiny_leaves, tmp_path / "train"))
    lonely = tmp_path / "elsewhere" / "model.pt"
    lonely.parent.mkdir()
    shutil.copy(tmp_path / "train/run/checkpoints/best.pt", lonely)
    shutil.rmtree(tmp_path / "train")  # no config, no run directory: only the file
    report = evaluate_checkpoint(
        EvalConfig(checkpoint=str(lonely), workers=0, data=str(tiny_leaves)), log=lambda _: None
    )
    assert report["count"] == 8 and set(report["per_class"]) == set(SPECIES_USED)
    # every figure of eval.json recomputed from the model's own predictions, image by image
    images = sorted((tiny_leaves / "test").rglob("*.png"))
    names = sorted(SPECIES_USED)
    truth = [names.index(p.parent.name) for p in images]
    predicted = offline_top1(str(lonely), images)
    assert report["top1"] == round(sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(images), 4)
    for index, name in enumerate(names):
        hits = sum(t == p == index for t, p in zip(truth, predicted, strict=True))
        precision = hits / max(1, predicted.count(index))
        recall = hits / max(1, truth.count(index))
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        expected = {"precision": precision, "recall": recall, "f1": f1, "support": truth.count(index)}
        assert report["per_class"][name] == pytest.approx(expected, abs=1e-4), name
    assert (lonely.parent.parent / "eval.json").is_file() and (lonely.parent.parent / "confusion_matrix.png").is_file()
    checkpoint = load_checkpoint(lonely)
    assert checkpoint["preprocess"]["input_size"] == 32 and checkpoint["class_names"] == sorted(SPECIES_USED)
    assert set(checkpoint["versions"]) == {"leafnet", "torch", "timm"}


def test_non_finite_loss_stops_with_a_clear_message(tiny_leaves, tmp_path):
    cfg = tiny_config(
        tiny_leaves, tmp_path, "optim.name=sgd", "optim.lr=1e30", "optim.clip_grad_norm=0", "schedule.warmup_epochs=0"
    )
    with pytest.raises(LeafnetError, match="NaN or infinite"):
        train(cfg)


@pytest.mark.integration
def test_train_cli_errors_are_one_line(tmp_path, run_script):
    process = subprocess.run(  # one as a real process; the rest in-process through the same __main__ block
        [sys.executable, str(REPO / "scripts/train.py"), "optim.lrate=1"], capture_output=True, text=True, cwd=REPO
    )
    assert process.returncode == 2 and process.stderr == "error: unknown config key 'optim.lrate'\n", process.stderr
    for args, needle in (
        (["data.root=/no/such/data"], "error: data.root=/no/such/data is not a prepared data directory"),
        (["optim.lr=fast"], "error: bad value for 'optim.lr'"),
        (["optim.lrate=1"], "error: unknown config key 'optim.lrate'"),
        (["model.name=resnet19", f"data.root={tmp_path}"], "error: data.root="),
        (["amp.dtype=fp8"], "error: amp.dtype must be one of"),
    ):
        result = run_script("train.py", *args, cwd=REPO)
        assert result.returncode == 2 and result.stderr.startswith(needle), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_model_name_suggests_close_ones():
    from leafnet.models import ModelConfig, create_model

    with pytest.raises(LeafnetError, match="unknown model 'resnet19'; did you mean"):
        create_model(ModelConfig(name="resnet19"), 4)


@pytest.mark.slow
def test_train_benchmark_measures_variants_side_by_side(tiny_leaves, tmp_path):
    from leafnet.bench.train import TrainBenchConfig, run_train_benchmark

    base = [f"data.root={tiny_leaves}", f"train.output_dir={tmp_path}", "data.batch_size=8", "train.threads=1"]
    config = TrainBenchConfig(
        base=base, variants={"w0": ["data.workers=0"], "w1": ["data.workers=1"]}, steps=3, warmup=1
    )
    result = run_train_benchmark(config, log=lambda _: None)["variants"]
    assert set(result) == {"w0", "w1"} and result["w0"]["speedup_vs_first"] == 1.0
    for r in result.values():
        assert r["images_per_s"] > 0 and r["compute_images_per_s"] > 0 and 0 <= r["data_wait_fraction"] < 1


def test_bad_checkpoints_fail_with_one_line(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    torch.save({"format": "leafnet-checkpoint", "format_version": 99}, tmp_path / "future.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save({"format": "leafnet-checkpoint", "x": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    for name, message in (
        ("missing.pt", "checkpoint not found"),
        ("text.pt", "not a torch checkpoint"),
        ("foreign.pt", "is not a leafnet checkpoint"),
        ("future.pt", "has checkpoint format 99"),
        ("truncated.pt", "cannot read checkpoint"),
    ):
        with pytest.raises(LeafnetError, match=message) as error:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(error.value)


def test_local_weights_load_with_a_new_head_and_reject_other_architectures(tmp_path):
    import timm

    from leafnet.models import ModelConfig, create_model

    source = timm.create_model("resnet10t", num_classes=10)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "r10.pt")
    model = create_model(ModelConfig(name="resnet10t", weights=str(tmp_path / "r10.pt")), num_classes=4)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.fc.out_features == 4
    with pytest.raises(LeafnetError, match="does not fit this architecture"):
        create_model(ModelConfig(name="resnet18", weights=str(tmp_path / "r10.pt")), num_classes=4)
    with pytest.raises(LeafnetError, match="model weights file not found"):
        create_model(ModelConfig(name="resnet18", weights=str(tmp_path / "none.pt")), num_classes=4)


@pytest.mark.slow
def test_ema_weights_are_saved_for_deployment_and_resume_restores_both(tiny_leaves, tmp_path):
    ema = ("ema.enabled=true", "ema.decay=0.9", "model.name=resnet10t", "schedule.epochs=3")
    train(tiny_config(tiny_leaves, tmp_path / "a", *ema))
    train(tiny_config(tiny_leaves, tmp_path / "b", *ema, "train.stop_after_epoch=1"))
    train(tiny_config(tiny_leaves, tmp_path / "b", *ema, "train.resume=auto"))
    a = load_checkpoint(tmp_path / "a/run/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "b/run/checkpoints/last.pt")
    assert any(not torch.equal(a["model"][k], a["train_model"][k]) for k in a["model"])  # EMA != raw
    for key in ("model", "train_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
