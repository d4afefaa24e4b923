"""The package outside the checkout: its metadata, its extras, the Python API, and a built wheel installed
into a fresh virtual environment running the whole path from an empty directory."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from leafnet.config import build_config, load_config
from leafnet.data.prepare import PrepareConfig
from leafnet.errors import LeafnetError
from leafnet.export.config import ExportConfig
from leafnet.extras import PROVIDES, MissingExtraError, require
from leafnet.train_config import TrainConfig

from .conftest import REPO, free_port
from .test_serving import loopback_properties

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_setuptools_options_live_in_setup_cfg_and_metadata_in_pyproject_never_both():
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(REPO / "setup.cfg")
    assert "setuptools" not in PYPROJECT.get("tool", {}), "setuptools options belong in setup.cfg"
    assert (
        setup_cfg["options"]["packages"] == "find_namespace:"
        and "leafnet.profiles" in setup_cfg["options.package_data"]
    )
    pep621 = {"name", "description", "readme", "license", "dependencies", "optional-dependencies", "urls"}
    in_both = pep621 & {key.replace("_", "-") for key in setup_cfg["metadata"]}
    assert not in_both and PYPROJECT["project"]["dynamic"] == ["version"] and "version" in setup_cfg["metadata"]


def test_license_file_is_the_declared_license_and_urls_and_classifiers_are_declared():
    assert PYPROJECT["project"]["license"] == "Apache-2.0" and PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert {"Homepage", "Repository", "Issues"} <= set(PYPROJECT["project"]["urls"])
    assert "Programming Language :: Python :: 3.11" in PYPROJECT["project"]["classifiers"]


def test_heavy_parts_are_extras_and_the_extras_registry_matches_pyproject():
    base = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, parts in PROVIDES.items():
        for distribution in parts.values():
            assert distribution not in base, f"{distribution} is in the base install"
            assert any(spec.startswith(distribution) for spec in extras[extra]), f"{distribution} not in [{extra}]"
    assert any(spec.startswith("dvc[gs]") for spec in extras["pipeline"]) and "dvc" not in base
    assert "leafnet[serve,pipeline]" in extras["dev"]  # make setup installs .[dev]: everything


# A subprocess that runs the leafnet command as a base install would: the serve extra's modules not found.
WITHOUT_SERVE = """
import sys
class WithoutServe:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ts", "model_archiver"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, WithoutServe())
from leafnet.commands import main
main(sys.argv[1:])
"""


def leafnet_without_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVE, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr("leafnet.extras.installed", lambda name: name != "model_archiver")
    with pytest.raises(MissingExtraError) as refused:
        require("serve", "packing archives", parts=("model_archiver",))
    expected = "packing archives needs torch-model-archiver, not installed: pip install 'leafnet[serve]'"
    assert str(refused.value) == expected
    require("serve", "serving", parts=("ts",))  # the parts that are installed pass


@pytest.mark.slow
def test_the_base_install_exports_model_files_and_says_which_extra_packs_archives(tiny_checkpoint, tmp_path):
    args = (f"checkpoint={tiny_checkpoint}", "output=out", "model_store=store", "workers=0", "threads=1")
    args += ("calibration.ood_per_family=4",)  # the unknown report's generated set: small here
    refused = leafnet_without_serve("export", *args, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "torch-model-archiver" in refused.stderr and "pip install 'leafnet[serve]'" in refused.stderr
    assert not (tmp_path / "out").exists()
    exported = leafnet_without_serve("export", *args, "served=[]", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["archives"] == {} and set(report["variants"]) >= {"torchscript", "onnx", "onnx-int8"}
    assert not list(tmp_path.glob("store/*.mar"))
    served = leafnet_without_serve("serve", "start", cwd=tmp_path)
    assert served.returncode == 2 and "pip install 'leafnet[serve]'" in served.stderr, served.stderr


def test_the_api_builds_configs_with_the_commands_defaults_and_names_bad_keys(tmp_path):
    assert build_config(TrainConfig) == load_config(TrainConfig, [])
    assert build_config(ExportConfig, checkpoint="x.pt") == load_config(ExportConfig, ["checkpoint=x.pt"])
    config = build_config(TrainConfig, {"schedule": {"epochs": 3}}, **{"optim.lr": 0.5}, data={"batch_size": 4})
    assert (config.schedule.epochs, config.optim.lr, config.data.batch_size) == (3, 0.5, 4)
    (tmp_path / "recipe.yaml").write_text("source: imagefolder\ninput: photos\n")
    assert build_config(PrepareConfig, tmp_path / "recipe.yaml").input == "photos"
    for bad, message in [
        ({"optim.lrr": 1}, "optim.lrr"),
        ({"epochs": 3}, "unknown option 'epochs'"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
    ]:
        with pytest.raises(LeafnetError, match=message):
            build_config(TrainConfig, **bad)
    with pytest.raises(LeafnetError, match="expected a TrainConfig"):
        build_config(TrainConfig, ExportConfig())


def test_the_stages_are_top_level_functions_and_run_as_the_commands(tmp_path):
    import leafnet.export.exporter  # binds leafnet.export to the package, as any import would
    import leafnet.train as training_module

    assert callable(leafnet.train) and leafnet.train is training_module and callable(leafnet.export)
    assert callable(leafnet.generate) and callable(leafnet.prepare) and callable(leafnet.evaluate)
    assert leafnet.Predictor.__name__ == "Predictor"
    with pytest.raises(LeafnetError, match="unknown option 'epochs' for TrainConfig"):
        leafnet.train(epochs=3)
    out = leafnet.generate(output=str(tmp_path / "raw"), synthetic={"per_species": 1, "seed": 1})
    assert len(list(Path(out, "images").glob("*.png"))) == 99


def checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs `command`; a failure shows its output."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def request_status(url: str) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _copy_sources(into: Path) -> Path:
    """What a source distribution holds (pyproject, setup.cfg, README, LICENSE, the package), so building
    the wheel leaves nothing behind in the checkout."""
    into.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, into / name)
    shutil.copytree(REPO / "leafnet", into / "leafnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def _venv_over_the_project_dependencies(venv: Path) -> Path:
    """A fresh virtual environment that sees the project venv's installed dependencies through a .pth line
    (installing torch again would need the network), but not its editable leafnet: a .pth line adds a
    folder to sys.path without running the .pth files in it, which is where the editable finder hooks in."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.mark.slow
@pytest.mark.integration
def test_the_wheel_installed_elsewhere_runs_the_whole_path(tmp_path):
    source = _copy_sources(tmp_path / "src")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", "dist"]
    checked([*build, "./src"], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("leafnet-*.whl"))
    bin_dir = _venv_over_the_project_dependencies(tmp_path / "venv")
    checked([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--quiet", "--no-deps",
             "--no-index", "--ignore-installed", str(wheel)])  # fmt: skip
    shutil.rmtree(source)
    work = tmp_path / "work"
    work.mkdir()
    # The serve extra's programs (torchserve, caddy) are the project venv's, found on PATH as a user's would be.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)

    def leafnet_cmd(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(bin_dir / "leafnet"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"leafnet {' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        return result

    def leafnet_python(code: str) -> str:
        return checked([str(bin_dir / "python"), "-c", code], cwd=work, env=env).stdout.strip()

    assert Path(leafnet_python("import leafnet; print(leafnet.__file__)")).is_relative_to(tmp_path / "venv")
    leafnet_cmd("generate", "output=raw", "synthetic.per_species=4", "synthetic.seed=3")
    leafnet_cmd("prepare", "source=kaggle", "input=raw", "output=data", "size=32", "val_fraction=0.25",
                "test_fraction=0.25", "workers=1")  # fmt: skip
    leafnet_cmd("train", "data.root=data", "data.input_size=0", "schedule.epochs=1", "schedule.warmup_epochs=0",
                "data.workers=0", "data.batch_size=32", "train.name=wheel")  # fmt: skip
    # One epoch on 99 classes is noise: the accuracy gate would judge quantization on chance.
    leafnet_cmd(
        "export", "checkpoint=runs/wheel/checkpoints/best.pt", "gates.max_top1_drop=100", "workers=0",
        "calibration.ood_per_family=4",
    )  # fmt: skip
    predicted = leafnet_cmd("predict", "exports/wheel", "data/test", "--output", "preds.csv")
    assert "images/s" in predicted.stdout + predicted.stderr
    rows = (work / "preds.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list((work / "data" / "test").rglob("*.png")))
    # TorchServe's own ports moved to free ones (a copy of the installed package's local profile, which the
    # supervisor resolves relative to the copy) and its pid file to a TMPDIR of its own: apart from any
    # server already running on this machine.
    installed = leafnet_python("from leafnet.profiles import TORCHSERVE; print(TORCHSERVE)")
    assert Path(installed).is_relative_to(tmp_path / "venv")
    properties, urls, _ = loopback_properties("config.properties", "unused", {"leafnet": "leafnet.mar"}, anchored=False)
    (work / "profile").mkdir()
    (work / "profile" / "config.properties").write_text(properties)
    for name in ("metrics.yaml", "log4j2.xml"):
        shutil.copy(Path(installed) / name, work / "profile" / name)
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    port = free_port()
    options = [f"port={port}", "ts_config=profile/config.properties"]
    leafnet_cmd("serve", "start", *options, timeout=200)
    try:
        image = next((work / "data" / "test").rglob("*.png")).read_bytes()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predictions/leafnet", data=image,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert len(answer["predictions"]) == 5 and answer["model_version"]
        leafnet_cmd("serve", "status", *options)
    finally:
        leafnet_cmd("serve", "stop", *options, timeout=120)
    assert request_status(f"{urls['inference']}/ping") is None
