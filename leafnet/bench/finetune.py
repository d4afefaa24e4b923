"""Does pretraining pay? A proof built from data the project generates, on the path a user with a weights
file takes (docs/finetune.md):

1. pretrain: a backbone trained on most of the synthetic species;
2. publish: its weights saved as a timm-format `model.safetensors` without the classifier, with a
   Hugging Face style `config.json` beside it (the backbone's preprocessing), as timm's published weights
   come;
3. the new task: the held-out species, a different class set, with `train_per_class` training images
   each (4 by default: with 10, training from scratch already reached 98% here, docs/finetune.md);
4. arms at an equal wall-clock budget: from scratch, a linear probe (head only), full fine-tuning and full
   fine-tuning with layer-wise learning-rate decay. Each arm's epochs are set from its own measured epoch
   time (a calibration run), so cheaper arms get more epochs, and each arm's real training time is
   reported beside its score.

Every run goes through the stages' own functions (leafnet.api), so the proof exercises exactly
`leafnet train model.pretrained=...`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from leafnet import api
from leafnet.checkpoint import load_checkpoint
from leafnet.data.prepare import PrepareConfig
from leafnet.data.species import SPECIES
from leafnet.data.synthetic import SyntheticConfig, render_leaf
from leafnet.errors import LeafnetError
from leafnet.finetune import classifier_modules
from leafnet.fsutil import write_json
from leafnet.models import model_from_checkpoint

logger = logging.getLogger(__name__)

DEFAULT_ARMS = {
    "scratch": [],
    "linear probe": ["model.pretrained=BACKBONE", "train.freeze_epochs=EPOCHS", "optim.lr=0.01"],
    "full fine-tune": ["model.pretrained=BACKBONE", "optim.lr=0.001"],
    "full fine-tune + layer decay": ["model.pretrained=BACKBONE", "optim.lr=0.002", "optim.layer_decay=0.7"],
}


@dataclass
class FinetuneBenchConfig:
    output: str = "runs/bench_finetune"  # data, runs, the backbone and finetune.{json,md} go here
    model: str = "resnet10t"  # the architecture of the backbone and of every arm
    seed: int = 0  # which species are held out, and every image
    held_out_species: int = 40  # species kept out of pretraining: the new task's classes
    pretrain_per_species: int = 16  # images per pretraining species
    pretrain_epochs: int = 20  # epochs of the backbone's training
    train_per_class: int = 4  # training images per class of the new task
    val_per_class: int = 3  # validation images per class (best.pt is chosen on them)
    test_per_class: int = 15  # test images per class: the scores in the table
    size: int = 64  # prepared image side
    input_size: int = 56  # model input side
    budget_s: float = 20.0  # training seconds per arm (each arm's epochs are fitted to it)
    calibration_epochs: int = 3  # epochs of the timing run per arm: its whole run time / epochs sets the arm's
    # arm name -> train overrides on top of the task's; BACKBONE and EPOCHS are filled in. Empty:
    # DEFAULT_ARMS (a dict given on the command line replaces them)
    arms: dict[str, list[str]] = field(default_factory=dict)
    threads: int = 0  # intra-op threads; 0 = all cores


def _render(species_indices: list[int], per_class: int, seed: int, root: Path) -> None:
    """Class folders of synthetic leaves of the given species (the generator's own renderer)."""
    config = SyntheticConfig()
    for index in species_indices:
        species = SPECIES[index]
        folder = root / species.name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            render_leaf(species, np.random.default_rng([seed, index, k]), config).save(folder / f"{k:03d}.png")


def _prepare(raw: Path, out: Path, config: FinetuneBenchConfig, val: float, test: float) -> Path:
    api.prepare(
        PrepareConfig(source="imagefolder", input=str(raw), output=str(out), size=config.size, seed=config.seed),
        val_fraction=val,
        test_fraction=test,
    )
    return out


def publish_backbone(checkpoint_path: Path, into: Path) -> Path:
    """`into/model.safetensors` (the trained network without its classifier, timm's key names) and
    `into/config.json` (architecture and pretrained_cfg: the preprocessing it was trained with), the way
    timm's weights are published on the Hugging Face hub."""
    from safetensors.torch import save_file

    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    head_params = {id(p) for module in classifier_modules(model) for p in module.parameters()}
    head = {name for name, p in model.named_parameters() if id(p) in head_params}
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in head}
    into.mkdir(parents=True, exist_ok=True)
    save_file(state, str(into / "model.safetensors"))
    spec = checkpoint["preprocess"]
    pretrained_cfg = {
        "input_size": [3, spec["input_size"], spec["input_size"]],
        "interpolation": spec["interpolation"],
        "crop_pct": spec["crop_pct"],
        "mean": spec["mean"],
        "std": spec["std"],
        "num_classes": 0,
    }
    write_json(into / "config.json", {"architecture": checkpoint["model_name"], "pretrained_cfg": pretrained_cfg})
    return into / "model.safetensors"


def _train(data: Path, runs: Path, name: str, config: FinetuneBenchConfig, overrides: list[str]) -> dict:
    base = {
        "data.root": str(data),
        "data.input_size": config.input_size,
        "data.batch_size": 32,
        "data.workers": 0,
        "model.name": config.model,
        "train.output_dir": str(runs),
        "train.name": name,
        "train.seed": config.seed,
        "train.threads": config.threads,
        "logging.tensorboard": False,
        "logging.image_grid": False,
        "logging.confusion_matrix": False,
        # What docs/finetune.md's figures were measured with, before the defaults became staged and bfloat16
        "data.augment.implementation": "timm",
        "amp.dtype": "none",
    }
    for override in overrides:
        key, value = override.split("=", 1)
        base[key] = value
    shutil.rmtree(runs / name, ignore_errors=True)
    return api.train(**base)


def run_finetune_benchmark(config: FinetuneBenchConfig) -> dict:
    if not 0 < config.held_out_species < len(SPECIES):
        raise LeafnetError(f"held_out_species must be between 1 and {len(SPECIES) - 1}")
    out = Path(config.output)
    order = np.random.default_rng(config.seed).permutation(len(SPECIES)).tolist()
    held_out, pretrain_species = sorted(order[: config.held_out_species]), sorted(order[config.held_out_species :])
    started = time.perf_counter()

    logger.info("finetune bench: pretraining on %d species, new task: %d others", len(pretrain_species), len(held_out))
    _render(pretrain_species, config.pretrain_per_species, config.seed, out / "raw" / "pretrain")
    pretrain_data = _prepare(out / "raw" / "pretrain", out / "data" / "pretrain", config, 0.15, 0.0)
    per_class = config.train_per_class + config.val_per_class + config.test_per_class
    _render(held_out, per_class, config.seed + 1, out / "raw" / "task")
    task_data = _prepare(
        out / "raw" / "task", out / "data" / "task", config, config.val_per_class / per_class,
        config.test_per_class / per_class,
    )  # fmt: skip
    runs = out / "runs"
    pretrained = _train(pretrain_data, runs, "pretrain", config, [f"schedule.epochs={config.pretrain_epochs}"])
    backbone = publish_backbone(runs / "pretrain" / "checkpoints" / "best.pt", out / "backbone")
    top1 = pretrained["best_val_top1"]
    logger.info("finetune bench: backbone %s (pretraining val top-1 %.1f%%)", backbone, 100 * top1)

    arms = config.arms or DEFAULT_ARMS
    rows = []
    for arm, overrides in arms.items():
        name = arm.replace(" ", "_").replace("+", "and")
        filled = [o.replace("BACKBONE", str(backbone)) for o in overrides]
        calibration = [o.replace("EPOCHS", str(config.calibration_epochs)) for o in filled]
        calibration.append(f"schedule.epochs={config.calibration_epochs}")
        timing = _train(task_data, runs, f"{name}_timing", config, calibration)
        # The whole run's seconds per epoch (setup, validation, checkpoints): the budget is wall-clock.
        epochs = max(1, math.floor(config.budget_s * config.calibration_epochs / timing["seconds"]))
        final = [o.replace("EPOCHS", str(epochs)) for o in filled]
        summary = _train(task_data, runs, name, config, [*final, f"schedule.epochs={epochs}"])
        scores = api.evaluate(checkpoint=str(runs / name / "checkpoints" / "best.pt"), split="test")
        rows.append(
            {
                "arm": arm,
                "overrides": final,
                "epochs": epochs,
                "train_seconds": summary["seconds"],
                "val_top1": summary["best_val_top1"],
                "test_top1": scores["top1"],
                "test_top5": scores["top5"],
            }
        )
        logger.info("finetune bench: %s: %d epochs in %.0f s, test top-1 %.1f%%", arm, epochs, summary["seconds"],
                    100 * scores["top1"])  # fmt: skip
    pretrain = {"species": len(pretrain_species), "per_species": config.pretrain_per_species}
    pretrain |= {"epochs": config.pretrain_epochs, "val_top1": top1}
    task = {"classes": len(held_out), "train_per_class": config.train_per_class}
    task |= {"val_per_class": config.val_per_class, "test_per_class": config.test_per_class}
    return {
        "model": config.model,
        "pretrain": pretrain,
        "task": task,
        "budget_s": config.budget_s,
        "arms": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }


def markdown(result: dict) -> str:
    lines = [
        "| arm | epochs | training s | val top-1 | test top-1 | test top-5 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["arms"]:
        lines.append(
            f"| {row['arm']} | {row['epochs']} | {row['train_seconds']:.0f} | {row['val_top1']:.1%} "
            f"| {row['test_top1']:.1%} | {row['test_top5']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def write_results(config: FinetuneBenchConfig, result: dict) -> None:
    out = Path(config.output)
    write_json(out / "finetune.json", result)
    (out / "finetune.md").write_text(markdown(result))
    logger.info("wrote %s and %s", out / "finetune.json", out / "finetune.md")
    logger.info("%s", markdown(result))
