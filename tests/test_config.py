import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import yaml

from leafnet.commands import COMMANDS
from leafnet.config import load_config, to_yaml
from leafnet.data.prepare import PrepareConfig
from leafnet.errors import LeafnetError
from tests.conftest import REPO


@dataclass
class Inner:
    depth: int = 2


@dataclass
class Schema:
    name: str = "run"
    lr: float = 0.1
    out: str = "runs/${name}"
    inner: Inner = field(default_factory=Inner)


def test_defaults_file_then_overrides_win_in_that_order(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("name: fromfile\nlr: 0.5\n")
    config = load_config(Schema, ["--config", str(yaml), "lr=0.01", "inner.depth=5"])
    assert (config.name, config.lr, config.inner.depth, config.out) == ("fromfile", 0.01, 5, "runs/fromfile")
    assert isinstance(config, Schema) and isinstance(config.inner, Inner)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lrr=0.1"], "unknown config key 'lrr'"),
        (["inner.width=3"], "unknown config key 'inner.width'"),
        (["lr=fast"], "bad value for 'lr'"),
        (["--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
        (["verbose"], "unexpected argument 'verbose'"),
        (["name={a:[b=c]}"], "cannot parse configuration"),
    ],
)
def test_bad_arguments_name_the_key(argv, message):
    with pytest.raises(LeafnetError, match=message):
        load_config(Schema, argv)


def test_prepare_output_follows_the_source():
    assert load_config(PrepareConfig, ["source=kaggle", "input=x"]).output == "data/processed/kaggle"
    assert "size: 128" in to_yaml(PrepareConfig())


def test_config_files_are_the_dataclasses_defaults_rendered():
    """config/train.yaml and config/export.yaml list every option with its default and description, as
    the dataclasses (the one source) render them: `make config-docs` rewrites them after a change."""
    from leafnet.config_files import FILES, render

    for name, (schema, _) in FILES.items():
        assert (REPO / name).read_text() == render(name), f"{name} is stale: run make config-docs"
        assert load_config(schema, files=[REPO / name]) == schema()


def alias_of(module: str) -> str | None:
    """The scripts/*.py alias of a leafnet command module; None for one without (serve's is scripts/serve.sh)."""
    aliases = [
        p.name for p in (REPO / "scripts").glob("*.py") if f"from leafnet.commands import {module}\n" in p.read_text()
    ]
    assert len(aliases) <= 1, f"more than one alias of {module}: {aliases}"
    return aliases[0] if aliases else None


@pytest.mark.parametrize("module", sorted(COMMANDS.values()))
def test_help_shows_every_option_with_the_default_a_plain_run_uses_and_a_description(module, run_script):
    import importlib

    from leafnet.config import describe

    defaults = importlib.import_module(f"leafnet.commands.{module}").CONFIG
    words = next(words for words, name in COMMANDS.items() if name == module)
    # through its alias, or `python -m leafnet WORDS` (leafnet/__main__.py) for a command without one
    alias = alias_of(module)
    shown = run_script(alias, "--help") if alias else run_script("../leafnet/__main__.py", *words, "--help")
    assert shown.returncode == 0
    listed, sections = {}, []  # dotted key -> (value, description), read back from the indented listing
    for line in shown.stdout.split("Every option, with the default a plain run uses:", 1)[1].splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name, _, rest = line.strip().partition(":")
        value, _, description = rest.partition(" # ")
        del sections[depth:]
        if not value.strip():
            sections.append(name)
            continue
        listed[".".join([*sections, name])] = (yaml.safe_load(value), description.strip())
    expected = describe(defaults())
    assert list(listed) == [key for key, _, _ in expected]
    for key, default, description in expected:
        assert listed[key] == ((list(default) if isinstance(default, tuple) else default), description), key
        assert description, f"{key} has no description"


def test_params_yaml_sets_what_the_pipeline_passes_and_matches_the_defaults():
    """params.yaml holds the values dvc.yaml passes as key=value; each equals the stage's default, so
    `make demo` and a plain `python scripts/<stage>.py` train and export the same thing."""
    import re

    from leafnet.bench.inference import InferenceBenchConfig
    from leafnet.config import describe
    from leafnet.data.prepare import PrepareConfig
    from leafnet.data.synthetic import GenerateConfig
    from leafnet.export.config import ExportConfig
    from leafnet.train_config import TrainConfig

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    schemas = {
        "generate": GenerateConfig,
        "prepare": PrepareConfig,
        "train": TrainConfig,
        "export": ExportConfig,
        "benchmark": InferenceBenchConfig,
    }
    for stage, schema in schemas.items():
        defaults = {key: value for key, value, _ in describe(schema())}
        for key, param in re.findall(r"([\w.]+)=\$\{([\w.]+)\}", stages[stage]["cmd"]):
            section, name = param.split(".")
            expected = defaults[key]
            assert params[section][name] == (list(expected) if isinstance(expected, tuple) else expected), key
    every = {f"{section}.{name}" for section, values in params.items() for name in values}
    passed = {p for stage in stages.values() for p in re.findall(r"\$\{([\w.]+)\}", stage["cmd"])}
    assert every == passed, "params.yaml holds a value no stage passes (or a stage passes one it lacks)"


def test_scripts_report_through_logging_quiet_with_q_and_detailed_with_v(tmp_path, run_script):
    import numpy as np
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "src" / name / f"{i}.png")
    args = ["source=imagefolder", f"input={tmp_path / 'src'}", "size=16", "workers=1"]
    plain = run_script("prepare_data.py", *args, f"output={tmp_path / 'plain'}")
    assert plain.returncode == 0 and "prepare: wrote" in plain.stdout and "INFO" not in plain.stdout
    quiet = run_script("prepare_data.py", "-q", *args, f"output={tmp_path / 'quiet'}")
    assert quiet.returncode == 0 and quiet.stdout == "" and (tmp_path / "quiet" / "manifest.csv").is_file()
    verbose = run_script("prepare_data.py", "--verbose", *args, f"output={tmp_path / 'verbose'}")
    assert "INFO leafnet.data.prepare: prepare: wrote" in verbose.stdout


def test_every_script_with_options_is_an_alias_of_a_command():
    aliases = [p for p in (REPO / "scripts").glob("*.py") if "run_command(" in p.read_text()]
    assert sorted(filter(None, map(alias_of, COMMANDS.values()))) == sorted(p.name for p in aliases)


def test_leafnet_lists_every_command_in_one_line_each(capsys):
    from leafnet.commands import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    listing = capsys.readouterr().out
    assert done.value.code == 0
    for words in COMMANDS:
        (line,) = [line for line in listing.splitlines() if line.startswith(f"  {' '.join(words)}  ")]
        assert len(line.split(None, len(words))[-1]) > 10  # a summary, not just the name
    with pytest.raises(SystemExit) as done:
        main(["bench"])
    groups = "bench data, bench train, bench finetune, bench onnx, bench predict, bench serving"
    assert done.value.code == 2 and groups in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["tain"])
    assert done.value.code == 2 and "unknown command 'tain'" in capsys.readouterr().err


def test_the_command_runs_a_stage_with_overrides_as_its_script_does(tmp_path, capsys):
    """`leafnet bench onnx` (here: its refusal of a missing export) and `python -m leafnet` in a real process."""
    from leafnet.commands import main

    with pytest.raises(SystemExit) as done:
        main(["bench", "onnx", str(tmp_path / "missing")])
    assert done.value.code == 2 and capsys.readouterr().err.startswith("error: ")
    shown = subprocess.run([sys.executable, "-m", "leafnet", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "bench serving" in shown.stdout
