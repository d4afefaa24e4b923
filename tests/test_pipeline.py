"""The DVC pipeline for real, in a temporary clone with tiny parameters: `dvc repro` builds every stage,
parameters re-run exactly what depends on them, `dvc exp run -S` works, and data round-trips through the
default remote and through the `gcs` remote served by gcp-storage-emulator on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from leafnet.checkpoint import load_checkpoint
from tests.conftest import REPO, free_port, offline_top1

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STAGES = ["generate", "prepare", "train", "evaluate", "export", "benchmark"]
# Every tracked artifact the pipeline makes, as `make demo` does.
PRODUCTS = [
    "data/raw/synthetic/train.csv",
    "data/processed/synthetic/manifest.csv",
    "runs/leafnet/checkpoints/best.pt",
    "runs/leafnet/metrics.csv",
    "runs/leafnet/timing.json",
    "runs/leafnet/eval.json",
    "runs/leafnet/confusion_matrix.png",
    "exports/leafnet/export.json",
    "exports/leafnet/model.int8.onnx",
    "model_store/leafnet.mar",
    "model_store/leafnet-onnx-int8.mar",
    "runs/benchmark_onnx/benchmark.json",
]
TINY = {
    # 99 species x 4 images, 25% val / 25% test: every class in every split.
    "data": {"per_species": 4, "size": 32, "val_fraction": 0.25, "test_fraction": 0.25},
    "train": {"input_size": 32, "epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2},
    # A one-epoch model is near chance: quantization may move top-1 by more than the default gate.
    "export": {"parity_images": 8, "calibration_images": 16, "max_top1_drop": 100.0, "ood_per_family": 4},
    "benchmark": {"min_seconds": 0.01},
}


def sh(*args: str, cwd: Path, env: dict) -> str:
    # PYTHONPATH: stages import the clone's leafnet, not the editable install's (this checkout's).
    env = {**env, "PYTHONPATH": str(cwd)}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def dvc(*args: str, cwd: Path, env: dict) -> str:
    return sh(str(Path(sys.executable).with_name("dvc")), *args, cwd=cwd, env=env)


def git(*args: str, cwd: Path, env: dict) -> str:
    return sh("git", *args, cwd=cwd, env=env)


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory's relative paths and file contents."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path)).encode() if path.is_dir() else b"")
        h.update(file.read_bytes())
    return h.hexdigest()


def stale_stages(repo: Path, env: dict) -> set[str]:
    return set(json.loads(dvc("status", "--json", cwd=repo, env=env) or "{}"))


def point_default_remote(repo: Path, storage: Path, env: dict) -> None:
    """Tests never touch the user's ~/.cache store: config.local overrides the default remote's url."""
    dvc("remote", "modify", "--local", "local", "url", str(storage), cwd=repo, env=env)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    scratch = tmp_path_factory.mktemp("dvc-env")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {
        **environment,  # bytecode caches appear beside the stages' modules, as on any machine
        # git and DVC's experiment commits need an identity; CI runners have none configured.
        "GIT_AUTHOR_NAME": "leafnet-test",
        "GIT_AUTHOR_EMAIL": "test@leafnet.invalid",
        "GIT_COMMITTER_NAME": "leafnet-test",
        "GIT_COMMITTER_EMAIL": "test@leafnet.invalid",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # stages call `python`
        "DVC_SITE_CACHE_DIR": str(scratch / "site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "NO_GCE_CHECK": "true",  # google-auth must not probe a GCE metadata server
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, env) -> Path:
    """A git repository holding the working tree's files (committed or not) with tiny params, reproduced."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("init", "-q", cwd=repo, env=env)
    git("add", "-A", cwd=repo, env=env)
    git("commit", "-qm", "tiny pipeline", cwd=repo, env=env)
    point_default_remote(repo, repo.parent / "storage", env)
    dvc("repro", cwd=repo, env=env)
    git("add", "-A", cwd=repo, env=env)  # dvc.lock, as a user commits it
    git("commit", "-qm", "reproduced", cwd=repo, env=env)
    return repo


def test_repro_builds_every_stage_and_is_then_up_to_date(pipeline, env):
    for product in PRODUCTS:
        assert (pipeline / product).is_file(), product
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    assert stale_stages(pipeline, env) == set()
    assert "Data and pipelines are up to date" in dvc("status", cwd=pipeline, env=env)
    # The stages ran the clone's own code, whose imports left bytecode caches in the dependencies' folders:
    # .dvcignore keeps them out of the hashes.
    assert list((pipeline / "leafnet" / "export").glob("__pycache__/*.pyc"))
    stray = pipeline / "leafnet" / "monitoring" / "__pycache__" / "stray.cpython-311.pyc"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"not really bytecode")
    assert stale_stages(pipeline, env) == set()
    served = json.loads((pipeline / "exports/leafnet/export.json").read_text())
    assert served["num_classes"] == 99 and served["test_images"] == 99


def test_metrics_and_plots_show_the_results(pipeline, env, tmp_path):
    metrics = json.loads(dvc("metrics", "show", "--json", cwd=pipeline, env=env))
    files = next(iter(metrics.values()))["data"]
    evaluation = files["runs/leafnet/eval.json"]["data"]
    exported = files["exports/leafnet/export.json"]["data"]
    assert evaluation["split"] == "test" and evaluation["count"] == 99
    # top-1 recomputed image by image from the pipeline's checkpoint
    checkpoint = pipeline / "runs/leafnet/checkpoints/best.pt"
    images = sorted((pipeline / "data/processed/synthetic/test").rglob("*.png"))
    names = load_checkpoint(checkpoint)["class_names"]
    predicted = offline_top1(str(checkpoint), images)
    hits = sum(names[p] == image.parent.name for p, image in zip(predicted, images, strict=True))
    assert len(images) == 99 and evaluation["top1"] == round(hits / len(images), 4)
    assert exported["variants"]["onnx-int8"]["test_top1"] == pytest.approx(
        json.loads((pipeline / "exports/leafnet/export.json").read_text())["variants"]["onnx-int8"]["test_top1"]
    )
    dvc("plots", "show", "--out", str(tmp_path / "plots"), cwd=pipeline, env=env)
    page = (tmp_path / "plots" / "index.html").read_text()
    for plot in ["accuracy", "loss", "confusion_matrix.png", "benchmark.png"]:
        assert plot in page, plot


def test_each_parameter_invalidates_only_the_stage_that_declares_it(pipeline, env):
    """`dvc status` names the stages whose own dependencies changed; downstream stages follow at repro time
    only if those stages' outputs change: a changed output is named by its stage and by every stage that
    reads it."""
    params_file = pipeline / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    try:
        for key, value, expected in [
            ("data.per_species", 5, "generate"),
            ("data.split_seed", 1, "prepare"),
            ("train.epochs", 2, "train"),
            ("export.parity_images", 4, "export"),
            ("benchmark.min_seconds", 0.02, "benchmark"),
        ]:
            section, name = key.split(".")
            params_file.write_text(yaml.safe_dump({**params, section: {**params[section], name: value}}))
            assert stale_stages(pipeline, env) == {expected}, key
        params_file.write_text(original)
        # a default that is no parameter lives in its stage's schema, a code dependency
        defaults = pipeline / "leafnet" / "export" / "config.py"
        defaults.write_text(defaults.read_text() + "\n")
        assert stale_stages(pipeline, env) == {"export"}, "leafnet/export/config.py"
        # the cascade's wiring: an output is a dependency of the stages after it
        for output, file, expected in [
            ("runs/leafnet/checkpoints", "best.pt", {"train", "evaluate", "export", "benchmark"}),
            ("exports/leafnet", "export.json", {"export", "benchmark"}),
        ]:
            changed = pipeline / output / file
            changed.unlink()  # the cached file may be a link into DVC's cache: never written through
            changed.write_bytes(b"changed")
            assert stale_stages(pipeline, env) == expected, output
            dvc("checkout", "--force", output, cwd=pipeline, env=env)
    finally:
        params_file.write_text(original)
        git("checkout", "HEAD", "--", "leafnet/export/config.py", cwd=pipeline, env=env)
    assert stale_stages(pipeline, env) == set()


def test_exp_run_sets_a_parameter_and_reruns_what_depends_on_it(pipeline, env):
    """The last stage's parameter: the experiment re-runs the benchmark alone (a parameter upstream would
    re-run train, evaluate and export too, a minute of this suite for what the status test above and
    tests/test_dvc_deps.py already pin: which stage declares what, and what each stage reads)."""
    data = digest(pipeline / "data/processed/synthetic")
    checkpoint = digest(pipeline / "runs/leafnet/checkpoints/best.pt")
    export = (pipeline / "exports/leafnet/export.json").read_bytes()
    dvc("exp", "run", "-S", "benchmark.min_seconds=0.02", "--name", "longer-cells", cwd=pipeline, env=env)
    experiments = json.loads(dvc("exp", "show", "--json", cwd=pipeline, env=env))
    runs = [e for entry in experiments for e in (entry.get("experiments") or [])]
    assert "longer-cells" in [run.get("name") for run in runs]
    # The workspace holds the experiment's result: the benchmark re-ran with the new value ...
    benchmark = json.loads((pipeline / "runs/benchmark_onnx/benchmark.json").read_text())
    assert benchmark["min_seconds"] == 0.02
    assert stale_stages(pipeline, env) == set()
    # ... and nothing before it did
    assert digest(pipeline / "runs/leafnet/checkpoints/best.pt") == checkpoint
    assert (pipeline / "exports/leafnet/export.json").read_bytes() == export
    assert digest(pipeline / "data/processed/synthetic") == data
    git("checkout", "HEAD", "--", "params.yaml", "dvc.lock", cwd=pipeline, env=env)
    dvc("checkout", "--force", cwd=pipeline, env=env)
    assert stale_stages(pipeline, env) == set()


def clone_and_pull(pipeline: Path, into: Path, env: dict, *pull_args: str, remote_setup=None) -> Path:
    git("clone", "-q", str(pipeline), str(into), cwd=pipeline.parent, env=env)
    if remote_setup:
        remote_setup(into)
    dvc("pull", *pull_args, cwd=into, env=env)
    return into


def assert_same_products(original: Path, pulled: Path, env: dict) -> None:
    for product in ["data/raw/synthetic", "data/processed/synthetic", "runs/leafnet/checkpoints", "model_store"]:
        assert digest(pulled / product) == digest(original / product), product
    assert stale_stages(pulled, env) == set()  # nothing to re-run: the pull restored every output


def test_default_remote_round_trip_restores_identical_data(pipeline, env, tmp_path):
    storage = pipeline.parent / "storage"
    dvc("push", cwd=pipeline, env=env)
    assert any(storage.rglob("*")), "nothing reached the default remote"
    pulled = clone_and_pull(
        pipeline, tmp_path / "clone", env, remote_setup=lambda r: point_default_remote(r, storage, env)
    )
    assert_same_products(pipeline, pulled, env)


@pytest.fixture
def gcs_emulator(tmp_path) -> Iterator[tuple[str, str]]:
    """gcp-storage-emulator on a free loopback port with the `gcs` remote's bucket: (its URL, the bucket)."""
    bucket = re.search(r"url = gs://([^/\s]+)/", (REPO / ".dvc" / "config").read_text()).group(1)
    port = free_port()
    emulator = Path(sys.executable).with_name("gcp-storage-emulator")
    log = (tmp_path / "emulator.log").open("w")
    process = subprocess.Popen(
        [str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", bucket],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError as error:
                if process.poll() is not None or time.monotonic() > deadline:
                    started = (tmp_path / "emulator.log").read_text()
                    raise AssertionError(f"gcp-storage-emulator did not start:\n{started}") from error
                time.sleep(0.2)
        yield url, bucket
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_gcs_remote_round_trip_through_the_emulator(pipeline, env, gcs_emulator, tmp_path):
    url, bucket = gcs_emulator
    gcs_env = {**env, "STORAGE_EMULATOR_HOST": url}

    def use_emulator(repo: Path) -> None:
        dvc("remote", "modify", "--local", "gcs", "endpointurl", url, cwd=repo, env=gcs_env)

    use_emulator(pipeline)
    # The emulator answers one request at a time with a listen backlog of 5 (http.server.HTTPServer);
    # dvc's default of 4 x cores parallel transfers can exceed that. Two at a time keeps the test
    # independent of connection timing (it failed once in a full-suite run, never alone).
    jobs = ("-j", "2")
    dvc("push", "-r", "gcs", *jobs, cwd=pipeline, env=gcs_env)
    with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o") as response:
        objects = json.loads(response.read())["items"]
    assert len(objects) > 100 and all(item["name"].startswith("leafnet/") for item in objects)
    pulled = clone_and_pull(pipeline, tmp_path / "clone", gcs_env, "-r", "gcs", *jobs, remote_setup=use_emulator)
    assert_same_products(pipeline, pulled, gcs_env)
