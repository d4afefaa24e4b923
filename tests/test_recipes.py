"""The training recipes in config/recipes: the silhouette one is leafnet's defaults written out, and the
photograph one trains end to end with every fine-tuning control it turns on."""

from __future__ import annotations

import dataclasses

import pytest

from leafnet.checkpoint import load_checkpoint
from leafnet.config import load_config
from leafnet.train import main as train
from leafnet.train_config import TrainConfig

from .conftest import REPO, tiny_config

RECIPES = REPO / "config" / "recipes"


def test_the_leaves_recipe_is_the_default_with_the_data_normalisation_spelled_out():
    recipe = load_config(TrainConfig, ["--config", str(RECIPES / "leaves.yaml")])
    defaults = load_config(TrainConfig, [])
    # normalize: auto means data when no pretrained file is given, which the recipe says outright
    assert recipe.data.normalize == "data" and defaults.data.normalize == "auto"
    assert dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, normalize="auto")) == defaults


@pytest.mark.slow
def test_the_photos_recipe_trains_with_its_fine_tuning_controls(tiny_leaves, tmp_path):
    """RandAugment, mixup/cutmix, layer decay, a head-only first epoch, balanced sampling, drop-path and the
    backbone's normalisation, on tiny data with a small model of the same kind of setting."""
    recipe = ["--config", str(RECIPES / "photos.yaml")]
    small = ["model.name=resnet10t", "data.input_size=32", "schedule.epochs=2", "data.batch_size=8"]
    config = tiny_config(tiny_leaves, tmp_path, *recipe, *small, "schedule.warmup_epochs=0.5")
    assert config.optim.layer_decay == 0.75 and config.train.freeze_epochs == 1 and config.mixup.cutmix_alpha == 1.0
    summary = train(config)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    # no weights file given: the backbone's normalisation is timm's configuration of the architecture
    assert checkpoint["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # keep_top=3 over 2 validated epochs keeps both; early stopping (patience 8) never fired
    assert len(list((tmp_path / "run" / "checkpoints" / "top").glob("epoch*_top1_*.pt"))) == 2
    assert "early_stopped_after_epoch" not in summary and checkpoint["epoch"] in (0, 1)
