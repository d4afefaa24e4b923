"""The stages as Python functions, with the command's defaults: each takes a config (its dataclass, a dict
or a YAML file) and keyword overrides (a field, a dotted path or a section's dict), exactly as
`leafnet <stage> --config FILE key=value` does, and returns what the stage wrote.

    import leafnet
    leafnet.prepare(source="imagefolder", input="photos", output="data/processed/photos")
    leafnet.train(**{"data.root": "data/processed/photos", "schedule.epochs": 10})
    leafnet.export(checkpoint="runs/leafnet/checkpoints/best.pt")
    leafnet.Predictor.load("exports/leafnet").predict(["a.jpg"])

`leafnet.train` and `leafnet.export` are also the names of leafnet's training module and export package:
Python binds a submodule to its parent's attribute when it is imported, so a plain function there would
be replaced by the module the first time anything imported it. Those two modules are made callable
instead (leafnet/callable_stage.py): `leafnet.train(...)` is this module's `train` however leafnet was imported.
Messages go to the "leafnet" logger: `logging.basicConfig(level=logging.INFO)` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leafnet.config import build_config


def generate(config: Any = None, /, **overrides: Any) -> Path:
    """The synthetic leaf set in the Kaggle layout (`leafnet generate`); returns its folder."""
    from leafnet.data.synthetic import GenerateConfig, generate_leaf_set
    from leafnet.progress import progress_bar

    options = build_config(GenerateConfig, config, **overrides)
    return generate_leaf_set(
        options.output, options.synthetic, progress=lambda items: progress_bar(items, desc="generate", unit="img")
    )


def prepare(config: Any = None, /, **overrides: Any) -> dict:
    """A raw set (Kaggle layout, class folders, synthetic) checked, split and written in the prepared layout
    (`leafnet prepare`); returns the statistics written to its stats.json."""
    from leafnet.data.prepare import PrepareConfig
    from leafnet.data.prepare import prepare as run

    return run(build_config(PrepareConfig, config, **overrides))


def train(config: Any = None, /, **overrides: Any) -> dict:
    """A training run (`leafnet train`); returns its final metrics. Under torchrun, every rank calls it."""
    from leafnet.train import main
    from leafnet.train_config import TrainConfig

    return main(build_config(TrainConfig, config, **overrides))


def evaluate(config: Any = None, /, **overrides: Any) -> dict:
    """A checkpoint's metrics on a split (`leafnet evaluate`); returns what eval.json holds."""
    from leafnet.evaluation import EvalConfig, evaluate_checkpoint

    return evaluate_checkpoint(build_config(EvalConfig, config, **overrides))


def export(config: Any = None, /, **overrides: Any) -> dict:
    """Every variant of a checkpoint, gated against eager, and the served archives (`leafnet export`);
    returns what export.json holds."""
    from leafnet.export.config import ExportConfig
    from leafnet.export.exporter import export_checkpoint

    return export_checkpoint(build_config(ExportConfig, config, **overrides))


STAGES = {"generate": generate, "prepare": prepare, "train": train, "evaluate": evaluate, "export": export}
