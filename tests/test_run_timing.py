"""What a training run's wall time is spent on: the background checkpoint writer (leafnet/checkpoint_writer.py),
the run clock and time-to-accuracy (leafnet/run_clock.py), and the whole-run benchmark that reads them."""

from __future__ import annotations

import csv
import json
import os
import time

import pytest
import torch
import yaml

import leafnet.bench.train_run as train_run
import leafnet.checkpoint_writer as writer_module
from leafnet.bench.train import TrainBenchConfig, run_train_benchmark
from leafnet.checkpoint import load_checkpoint
from leafnet.checkpoint_writer import CheckpointWriter
from leafnet.errors import LeafnetError
from leafnet.run_clock import PHASES, RunClock, process_age, time_to_accuracy
from leafnet.train import main as train
from tests.conftest import tiny_config


def payload(value: float) -> dict:
    return {"model": {"weight": torch.full((4,), value)}, "epoch": int(value)}


@pytest.mark.parametrize("background", [True, False])
def test_one_serialisation_then_links_and_a_later_file_leaves_the_linked_one_alone(tmp_path, background):
    writer = CheckpointWriter(background)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    live = payload(1.0)
    writer.save(last, live, also=[best])
    live["model"]["weight"].fill_(9.0)  # training goes on in place: the file holds the values at save()
    writer.flush()
    assert os.stat(last).st_ino == os.stat(best).st_ino  # a link, not a second write
    assert load_checkpoint(best)["model"]["weight"].tolist() == [1.0] * 4
    writer.save(last, payload(2.0))
    writer.close()
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(best)["epoch"] == 1


def test_a_later_copy_reuses_the_memory_of_one_written_and_each_file_keeps_its_moment(tmp_path):
    writer = CheckpointWriter()
    live = {"model": {"weight": torch.full((4,), 1.0), "steps": torch.tensor(1)}, "epoch": 1, "rng": [torch.ones(2)]}
    writer.save(tmp_path / "e1.pt", live)
    writer.flush()
    first_copy = writer._spare.queue[0]["model"]["weight"]  # written, offered for the next copy
    live["model"]["weight"].fill_(2.0)
    live["model"]["steps"].fill_(2)
    live["epoch"] = 2
    live["rng"] = [torch.ones(3)]  # another shape: a new tensor, not the spare's
    writer.save(tmp_path / "e2.pt", live)
    live["model"]["weight"].fill_(3.0)  # training goes on in place while e2.pt is written
    writer.close()
    first, second = load_checkpoint(tmp_path / "e1.pt"), load_checkpoint(tmp_path / "e2.pt")
    assert first["model"]["weight"].tolist() == [1.0] * 4 and first["epoch"] == 1 and first["rng"][0].numel() == 2
    assert second["model"]["weight"].tolist() == [2.0] * 4 and second["model"]["steps"].item() == 2
    assert second["epoch"] == 2 and second["rng"][0].numel() == 3
    assert first_copy.tolist() == [2.0] * 4  # e2's copy went into e1's memory, after e1 was on disk
    assert writer._spare.empty()  # closed: the memory is let go


def test_files_are_written_in_order_with_the_pruning_between(tmp_path, monkeypatch):
    """Each save: its first file, then the pruning, then the links (last.pt names the kept top files, so it
    comes after both); saves land in the order they were made."""
    events = []
    write, link = writer_module.atomic_write_bytes, writer_module.link_or_write
    monkeypatch.setattr(
        writer_module, "atomic_write_bytes", lambda p, d: (events.append(("write", p.name)), write(p, d))
    )
    monkeypatch.setattr(
        writer_module, "link_or_write", lambda s, t, d: (events.append(("link", t.name)), link(s, t, d))
    )
    real_unlink = type(tmp_path).unlink

    def unlink(path, missing_ok=False):
        events.append(("remove", path.name))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(type(tmp_path), "unlink", unlink)
    (tmp_path / "top").mkdir()
    writer = CheckpointWriter()
    for epoch in range(3):
        stale = [tmp_path / "top" / f"e{epoch - 1}.pt"] if epoch else []
        writer.save(tmp_path / "top" / f"e{epoch}.pt", payload(epoch), also=[tmp_path / "last.pt"], remove=stale)
    writer.close()
    assert [e for e in events if e[1] != ".last.pt.link"] == [
        ("write", "e0.pt"), ("link", "last.pt"),
        ("write", "e1.pt"), ("remove", "e0.pt"), ("link", "last.pt"),
        ("write", "e2.pt"), ("remove", "e1.pt"), ("link", "last.pt"),
    ]  # fmt: skip
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "top").iterdir()) == ["e2.pt"]


def test_without_links_the_same_bytes_are_written_again(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError("links not supported")

    monkeypatch.setattr(writer_module.os, "link", no_links)
    writer = CheckpointWriter()
    writer.save(tmp_path / "last.pt", payload(3.0), also=[tmp_path / "best.pt"])
    writer.close()
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no staging file left behind


def test_a_failed_write_is_raised_by_the_next_call_naming_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = CheckpointWriter()
    writer.save(blocker / "last.pt", payload(1.0))
    with pytest.raises(LeafnetError, match=r"writing checkpoint .*file/last\.pt failed"):
        writer.flush()
    writer.save(tmp_path / "ok.pt", payload(2.0))
    writer.close()
    assert (tmp_path / "ok.pt").is_file()


def test_the_clock_splits_the_wall_and_time_to_accuracy_reads_the_first_epoch_at_target():
    clock = RunClock()
    with clock.phase("validation"):
        time.sleep(0.05)
    clock.add("steps", 0.01)
    clock.add("data_wait", 0.01)
    clock.end_startup()
    report = clock.report()
    assert set(report) == {*PHASES, "other", "wall", "efficiency", "process_efficiency"}
    assert report["validation"] >= 0.05 and report["steps"] == 0.01 and report["startup"] >= 0.05
    assert report["efficiency"] == pytest.approx(0.02 / report["wall"], rel=0.01)  # no imports in this clock
    assert report["process_efficiency"] == report["efficiency"] and report["imports"] == 0
    rows = [{"wall_s": 5, "val_top1": 0.5}, {"wall_s": 9, "val_top1": ""}, {"wall_s": 12, "val_top1": 0.96}]
    assert time_to_accuracy(rows, 0.95) == 12 and time_to_accuracy(rows, 0.5) == 5
    assert time_to_accuracy(rows, 0.99) is None
    assert process_age() > 0 and RunClock(since_process_start=True).elapsed() >= process_age() - 0.5


def test_a_run_writes_its_wall_split_and_the_wall_at_each_epoch(tiny_leaves, tmp_path):
    summary = train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=3", "train.max_steps_per_epoch=2"))
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert timing == summary["timing"] and timing["steps"] > 0 and timing["validation"] > 0
    assert sum(timing[p] for p in (*PHASES, "other")) == pytest.approx(timing["wall"], abs=0.01)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        walls = [float(row["wall_s"]) for row in csv.DictReader(f)]
    assert len(walls) == 3 and walls == sorted(walls) and walls[-1] <= timing["wall"]
    best, last = tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "run" / "checkpoints" / "last.pt"
    assert load_checkpoint(best)["epoch"] <= load_checkpoint(last)["epoch"] == 2


@pytest.mark.slow
def test_the_run_benchmark_reports_time_to_accuracy_for_each_variant(tiny_leaves, tmp_path, run_script):
    base = [f"data.root={tiny_leaves}", "data.input_size=0", "data.batch_size=8", "schedule.epochs=2"]
    out = tmp_path / "bench" / "train.json"
    done = run_script(
        "benchmark_train.py",
        "mode=run",
        f"base=[{','.join(base)}]",
        "variants={before: [data.augment.implementation=timm,data.cache_mb=0,checkpoint.background=false], after: []}",
        "targets=[0.25,1.01]",
        "seeds=[0,5]",
        f"holdout={tiny_leaves}",  # its own test split again: the same classes, scored a second way
        f"output={out}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| variant | epochs |" in done.stdout + done.stderr and "holdout top-1" in done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert list(result["variants"]) == ["before", "after"] and result["targets"] == [0.25, 1.01]
    assert result["repeats"] == 2 and result["turns"] == [["train.seed=0"], ["train.seed=5"]]
    for name, row in result["variants"].items():
        assert row["epochs"] == 2 and row["time_to_1.01"] is None and 0 < row["efficiency"] <= 1
        assert row["process_wall_s"] >= row["wall"] > 0 and 0 <= row["test_top1"] <= 1
        low, high = row["test_top1_range"]
        assert low <= row["test_top1"] <= high and len(row["runs"]) == 2
        assert [run["holdout_top1"] for run in row["runs"]] == [run["test_top1"] for run in row["runs"]]
        for turn, seed in ((1, 0), (2, 5)):  # each turn trained with its own seed
            saved = yaml.safe_load(
                (tmp_path / "bench" / "train_runs" / f"turn{turn}" / name / "config.yaml").read_text()
            )
            assert saved["train"]["seed"] == seed
    assert result["variants"]["before"]["wall_vs_first"] == 1.0


@pytest.mark.parametrize(
    "config, culprit",
    [
        (TrainBenchConfig(mode="run", seeds=[0, 1], repeats=3), "seeds= gives 2 turns, repeats=3"),
        (TrainBenchConfig(mode="steps", seeds=[0, 1]), "seeds= applies to mode=run"),
        (TrainBenchConfig(mode="run", repeats=0), "repeats must be at least 1"),
        (TrainBenchConfig(mode="steps", holdout="data/processed/synthetic"), "holdout= applies to mode=run"),
        (
            TrainBenchConfig(mode="run", holdout="/nonexistent/holdout"),
            "holdout=/nonexistent/holdout is not a prepared data directory",
        ),
    ],
)
def test_the_run_benchmark_refuses_turns_it_cannot_honour_before_training(config, culprit, tmp_path):
    config.output = str(tmp_path / "train.json")
    with pytest.raises(LeafnetError, match=culprit):
        run_train_benchmark(config, log=lambda _: None)
    assert not (tmp_path / "train_runs").exists()


def test_the_source_fingerprint_follows_every_python_file_of_the_package(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("X = 1\n")
    (package / "sub" / "b.py").write_text("Y = 2\n")
    (package / "notes.txt").write_text("not code")
    first = train_run.source_fingerprint(package)
    assert train_run.source_fingerprint(package) == first
    (package / "notes.txt").write_text("still not code")
    assert train_run.source_fingerprint(package) == first
    (package / "sub" / "b.py").write_text("Y = 3\n")
    assert train_run.source_fingerprint(package) != first


def test_the_run_benchmark_stops_when_the_source_changes_between_runs(tmp_path, monkeypatch):
    """Every run is a fresh process importing the tree as it is then: an edit mid-benchmark (a default
    changed while it ran) would make the later turns of a variant another configuration than the first."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "defaults.py").write_text("IMPLEMENTATION = 'warp'\n")
    monkeypatch.setattr(train_run, "run_package", lambda: package)
    trained = []

    def train_once(name, overrides, base, output, log, holdout=None):
        """Stands in for a training process: the edit during the second run is the point."""
        trained.append(name)
        if len(trained) == 2:
            (package / "defaults.py").write_text("IMPLEMENTATION = 'timm'\n")
        return {"timing": {"wall": 1.0, "efficiency": 1.0}, "process_wall_s": 1.0}

    monkeypatch.setattr(train_run, "run_variant", train_once)
    monkeypatch.setattr(train_run, "_brief", lambda run, targets: "")
    with pytest.raises(LeafnetError, match=r"source changed during the benchmark, by the end of run b#1"):
        train_run.run_time_to_accuracy(
            {"a": [], "b": []}, [], [0.9], [["train.seed=0"], ["train.seed=1"]], tmp_path, print
        )
    assert trained == ["a", "b"]
