"""The fine-tuning proof's machinery (docs/finetune.md), on a tiny setting: a backbone published as timm
publishes weights, and every arm trained at its fitted epochs and scored on the held-out species."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from leafnet.bench.finetune import DEFAULT_ARMS, FinetuneBenchConfig, run_finetune_benchmark, write_results
from leafnet.checkpoint import load_checkpoint


@pytest.mark.slow
def test_the_proof_publishes_a_headless_backbone_and_scores_every_arm(tmp_path):
    config = FinetuneBenchConfig(
        output=str(tmp_path), held_out_species=3, pretrain_per_species=3, pretrain_epochs=1, train_per_class=2,
        val_per_class=1, test_per_class=2, size=32, input_size=32, budget_s=2.0, calibration_epochs=1,
    )  # fmt: skip
    result = run_finetune_benchmark(config)
    write_results(config, result)
    backbone = load_file(tmp_path / "backbone" / "model.safetensors")
    assert "fc.weight" not in backbone and "fc.bias" not in backbone and "conv1.0.weight" in backbone
    pretrained = load_checkpoint(tmp_path / "runs" / "pretrain" / "checkpoints" / "best.pt")
    published = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert published["architecture"] == "resnet10t"
    assert published["pretrained_cfg"]["mean"] == pretrained["preprocess"]["mean"]
    # the new task is other species than the backbone's
    task = load_checkpoint(tmp_path / "runs" / "scratch" / "checkpoints" / "best.pt")
    assert not set(task["class_names"]) & set(pretrained["class_names"]) and len(task["class_names"]) == 3
    assert [row["arm"] for row in result["arms"]] == list(DEFAULT_ARMS)
    for row in result["arms"]:
        assert row["epochs"] >= 1 and row["train_seconds"] > 0
    # the fine-tuned arms start from the backbone's weights, the scratch arm does not
    stem = backbone["conv1.0.weight"].flatten()

    def likeness(arm: str) -> float:
        trained = load_checkpoint(tmp_path / "runs" / arm / "checkpoints" / "best.pt")["model"]["conv1.0.weight"]
        return torch.nn.functional.cosine_similarity(trained.flatten(), stem, dim=0).item()

    assert likeness("linear_probe") > 0.999 and likeness("full_fine-tune") > 0.9 and likeness("scratch") < 0.5
    # fine-tuned arms start from the published backbone, normalised as it was trained
    full = load_checkpoint(tmp_path / "runs" / "full_fine-tune" / "checkpoints" / "best.pt")
    assert full["preprocess"]["mean"] == pretrained["preprocess"]["mean"]
    assert (tmp_path / "finetune.md").read_text().startswith("| arm |")
