"""model.pretrained: every weights file layout people have, the classifier and stem adapted to the new task,
strictness, and the backbone's preprocessing carried by the spec into checkpoints, archives and answers."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models import adapt_input_conv

import leafnet.export.exporter as exporter
from leafnet.checkpoint import load_checkpoint, save_checkpoint
from leafnet.data.batch_augment import INTERPOLATIONS
from leafnet.data.prepared import PreparedData
from leafnet.data.transforms import PreprocessSpec, eval_transform
from leafnet.errors import LeafnetError
from leafnet.models import ModelConfig, create_model, model_from_checkpoint, model_preprocessing
from leafnet.pretrained import load_pretrained, read_weights
from leafnet.serving.harness import ArchivedHandler
from leafnet.serving.preprocess import INTERPOLATION as HANDLER_INTERPOLATION
from leafnet.train import main as train
from tests.conftest import export_config, tiny_config, unpack

ARCH = "resnet10t"
FILE_CLASSES = 10  # the backbone's classifier; the new task has 4 classes
BACKBONE_NORM = {"mean": [0.51, 0.42, 0.33], "std": [0.21, 0.22, 0.23], "interpolation": "bicubic", "crop_pct": 0.9}


def backbone(num_classes: int = FILE_CLASSES, in_chans: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(ARCH, num_classes=num_classes, in_chans=in_chans).state_dict()


def fresh(num_classes: int = 4, seed: int = 0, **config) -> torch.nn.Module:
    """create_model as training calls it (seeded, so the classifier's initialisation is known)."""
    torch.manual_seed(seed)
    return create_model(ModelConfig(name=ARCH, channels_last=False, **config), num_classes)


def leafnet_checkpoint(path: Path, state: dict, spec: PreprocessSpec | None = None) -> Path:
    spec = spec or PreprocessSpec(input_size=32, mean=BACKBONE_NORM["mean"], std=BACKBONE_NORM["std"])
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = [f"c{i}" for i in range(FILE_CLASSES)]
    payload = {"model_name": ARCH, "num_classes": FILE_CLASSES, "class_names": classes, "preprocess": spec.to_dict()}
    save_checkpoint(path, {**payload, "model": state})
    return path


def write_layout(layout: str, state: dict, into: Path) -> Path:
    """`state` saved the way `layout` names, as timm, Hugging Face, DDP and leafnet runs leave it."""
    other = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}  # must not be the one picked
    if layout == "model.safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(into / "model.safetensors"))
        return into / "model.safetensors"
    path = into / {"pytorch_model.bin": "pytorch_model.bin", "leafnet": "best.pt"}.get(layout, "weights.pth.tar")
    if layout == "pytorch_model.bin":
        torch.save(state, path)
    elif layout == "state_dict":  # timm's train.py: arguments as an argparse.Namespace beside the weights
        torch.save({"epoch": 3, "arch": ARCH, "state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    elif layout in ("model", "model_state_dict"):
        torch.save({layout: state, "optimizer_state_dict": {}, "epoch": 3}, path)
    elif layout == "state_dict_ema":  # the EMA weights win, as in timm's load_state_dict
        torch.save({"state_dict": other, "state_dict_ema": state}, path)
    elif layout == "module. prefix":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif layout == "leafnet":
        leafnet_checkpoint(path, state)
    return path


@pytest.mark.parametrize(
    "layout",
    [
        "model.safetensors",
        "pytorch_model.bin",
        "state_dict",
        "model",
        "model_state_dict",
        "state_dict_ema",
        "module. prefix",
        "leafnet",
    ],
)
def test_every_weights_layout_loads_the_body_and_reinitialises_the_classifier(layout, tmp_path, caplog):
    state = backbone()
    path = write_layout(layout, state, tmp_path)
    with caplog.at_level(logging.INFO, logger="leafnet.pretrained"):
        model = fresh(pretrained=str(path))
    scratch = fresh().state_dict()  # the same seed: the classifier a run from scratch would start with
    loaded = model.state_dict()
    body = [k for k in loaded if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], state[k]) for k in body), layout
    assert model.fc.out_features == 4
    assert torch.equal(loaded["fc.weight"], scratch["fc.weight"]) and torch.equal(loaded["fc.bias"], scratch["fc.bias"])
    log = caplog.text
    assert f"loaded {len(body)} of {len(loaded)} tensors of {ARCH}" in log
    assert "classifier skipped for shape (re-initialised): fc." in log


def test_the_same_class_count_keeps_the_files_classifier_too(tmp_path):
    state = backbone(num_classes=4)
    torch.save(state, tmp_path / "w.pth")
    loaded = fresh(pretrained=str(tmp_path / "w.pth")).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_a_headless_backbone_loads_with_the_classifier_missing_as_expected(tmp_path, caplog):
    state = {k: v for k, v in backbone().items() if not k.startswith("fc.")}
    save_file(state, str(tmp_path / "model.safetensors"))
    with caplog.at_level(logging.INFO, logger="leafnet.pretrained"):
        loaded = fresh(pretrained=str(tmp_path / "model.safetensors")).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert "missing from the file (left at their initialisation): fc.weight, fc.bias" in caplog.text


def test_the_stem_is_adapted_between_one_and_three_input_channels(tmp_path):
    gray = backbone(in_chans=1)
    torch.save(gray, tmp_path / "gray.pth")
    rgb_model = fresh(pretrained=str(tmp_path / "gray.pth"))
    assert rgb_model.conv1[0].in_channels == 3
    expected = adapt_input_conv(3, gray["conv1.0.weight"], base_chans=1)  # repeated, scaled by 1/3
    assert torch.equal(rgb_model.state_dict()["conv1.0.weight"], expected)
    assert torch.allclose(expected.sum(1, keepdim=True), gray["conv1.0.weight"])

    rgb = backbone()
    save_file(rgb, str(tmp_path / "model.safetensors"))
    gray_model = timm.create_model(ARCH, num_classes=4, in_chans=1)
    report = load_pretrained(gray_model, tmp_path / "model.safetensors")
    assert report.adapted == ["conv1.0.weight (3 -> 1 channels)"] and not report.problems
    summed = gray_model.state_dict()["conv1.0.weight"]
    assert torch.allclose(summed, rgb["conv1.0.weight"].sum(1, keepdim=True))
    assert torch.equal(gray_model.state_dict()["layer1.0.conv1.weight"], rgb["layer1.0.conv1.weight"])


def test_a_vit_file_is_resampled_to_the_models_image_size_by_timms_filter(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=FILE_CLASSES, depth=2).state_dict()
    torch.save({"model": source}, tmp_path / "vit.pth")
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2, img_size=32)
    report = load_pretrained(model, tmp_path / "vit.pth", name="vit_tiny_patch16_224")
    assert not report.problems and sorted(report.skipped) == ["head.bias", "head.weight"]
    assert model.state_dict()["pos_embed"].shape == (1, 1 + 2 * 2, 192)  # 14x14 patches resampled to 2x2
    assert torch.equal(model.state_dict()["blocks.1.mlp.fc2.weight"], source["blocks.1.mlp.fc2.weight"])


def test_a_mismatch_beyond_the_classifier_fails_in_one_line_unless_not_strict(tmp_path, caplog):
    state = backbone()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 32, 3, 3)  # another shape in the body
    del state["layer2.0.bn1.running_mean"]  # a tensor missing from the body
    torch.save(state, tmp_path / "bent.pth")
    with pytest.raises(LeafnetError) as error:
        fresh(pretrained=str(tmp_path / "bent.pth"))
    message = str(error.value)
    assert "\n" not in message and "does not fit this architecture (resnet10t)" in message
    assert "layer1.0.conv1.weight (64, 32, 3, 3) in the file" in message
    assert "1 missing from the file (layer2.0.bn1.running_mean)" in message
    assert "model.pretrained_strict=false" in message

    with caplog.at_level(logging.INFO, logger="leafnet.pretrained"):
        loaded = fresh(pretrained=str(tmp_path / "bent.pth"), pretrained_strict=False).state_dict()
    assert any(r.levelno == logging.WARNING and "fit resnet10t only in part" in r.getMessage() for r in caplog.records)
    scratch = fresh().state_dict()
    assert torch.equal(loaded["layer1.0.conv1.weight"], scratch["layer1.0.conv1.weight"])
    assert torch.equal(loaded["layer1.0.conv2.weight"], state["layer1.0.conv2.weight"])

    torch.save(backbone(), tmp_path / "r10.pth")  # another architecture altogether
    with pytest.raises(LeafnetError, match=r"does not fit this architecture \(resnet18\)"):
        create_model(ModelConfig(name="resnet18", pretrained=str(tmp_path / "r10.pth")), 4)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.pth", "model weights file not found"),
        ("text.pth", "cannot read model weights file"),
        ("no_state.pth", "holds no state dict"),
        ("pickled.pth", r"a safe \(weights_only\) load refuses"),
    ],
)
def test_files_that_are_no_weights_fail_in_one_line(name, message, tmp_path):
    (tmp_path / "text.pth").write_text("not weights")
    torch.save({"epoch": 3, "best": 0.5}, tmp_path / "no_state.pth")
    torch.save({"state_dict": backbone(), "args": datetime.date(2024, 1, 1)}, tmp_path / "pickled.pth")
    with pytest.raises(LeafnetError, match=message) as error:
        read_weights(tmp_path / name)
    assert "\n" not in str(error.value)


def test_model_weights_is_the_former_name_of_model_pretrained(tmp_path):
    state = backbone()
    torch.save(state, tmp_path / "w.pth")
    loaded = fresh(weights=str(tmp_path / "w.pth")).state_dict()
    assert torch.equal(loaded["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
    with pytest.raises(LeafnetError, match=r"former name of model\.pretrained"):
        fresh(weights=str(tmp_path / "w.pth"), pretrained=str(tmp_path / "other.pth"))


def test_drop_path_rate_reaches_timm_and_a_model_without_it_says_so():
    model = fresh(drop_path_rate=0.1)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)
    with pytest.raises(LeafnetError, match=r"vgg11 does not take model\.drop_path_rate"):
        create_model(ModelConfig(name="vgg11", drop_path_rate=0.1), 4)


def test_the_spec_follows_the_backbone_a_json_beside_it_or_the_data(tmp_path):
    torch.save(backbone(), tmp_path / "w.pth")
    weights = str(tmp_path / "w.pth")
    # timm's pretrained config of the architecture (code, not a download); a tag picks that release's
    timm_cfg = model_preprocessing(ModelConfig(name=ARCH, pretrained=weights))
    assert timm_cfg == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]} | {
        "interpolation": "bicubic",
        "crop_pct": 0.875,
    }
    clip = model_preprocessing(ModelConfig(name="vit_base_patch16_clip_224.openai"), normalize="pretrained")
    assert clip["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    # a config.json beside the weights, as timm publishes them on the Hugging Face hub
    config = {"architecture": ARCH, "num_classes": 10, "pretrained_cfg": {**BACKBONE_NORM, "input_size": [3, 32, 32]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_preprocessing(ModelConfig(name=ARCH, pretrained=weights)) == BACKBONE_NORM
    # what the user set wins; data normalisation keeps the data's statistics (the spec's defaults otherwise)
    chosen = model_preprocessing(ModelConfig(name=ARCH, pretrained=weights), "auto", "bilinear", 1.0)
    assert chosen == {**BACKBONE_NORM, "interpolation": "bilinear", "crop_pct": 1.0}
    assert model_preprocessing(ModelConfig(name=ARCH, pretrained=weights), "data") == {}
    assert model_preprocessing(ModelConfig(name=ARCH), "data", None, 0.8) == {"crop_pct": 0.8}
    # a leafnet checkpoint carries the preprocessing it was trained with
    spec = PreprocessSpec(mean=[0.3] * 3, std=[0.4] * 3, interpolation="bilinear", crop_pct=0.95)
    checkpoint = leafnet_checkpoint(tmp_path / "run" / "best.pt", backbone(), spec)
    expected = {"mean": [0.3] * 3, "std": [0.4] * 3, "interpolation": "bilinear", "crop_pct": 0.95}
    assert model_preprocessing(ModelConfig(name=ARCH, pretrained=str(checkpoint))) == expected
    with pytest.raises(LeafnetError, match=r"data\.normalize must be one of auto, pretrained, data"):
        model_preprocessing(ModelConfig(name=ARCH), "imagenet")
    with pytest.raises(LeafnetError, match="unknown model 'resnet19'"):
        model_preprocessing(ModelConfig(name="resnet19", pretrained=weights))


def test_without_a_weights_file_the_demos_spec_is_unchanged(tiny_leaves, tmp_path):
    """data.normalize=auto without model.pretrained: the train split's mean/std, bilinear, crop_pct 1.0, as
    before the option existed; data.normalize=data with a backbone keeps them too."""
    before = PreprocessSpec.from_prepared(tiny_leaves, input_size=56, crop_pct=1.0, interpolation="bilinear")
    now = PreprocessSpec.from_prepared(tiny_leaves, input_size=56, **model_preprocessing(ModelConfig()))
    assert now == before and now.mean == PreparedData(tiny_leaves).stats()["mean"]
    torch.save(backbone(), tmp_path / "w.pth")
    data = model_preprocessing(ModelConfig(pretrained=str(tmp_path / "w.pth")), "data")
    assert PreprocessSpec.from_prepared(tiny_leaves, input_size=56, **data) == before


@pytest.mark.slow
def test_a_fine_tune_from_a_weights_file_serves_with_the_backbones_normalisation(tiny_leaves, tmp_path, caplog):
    """model.safetensors + config.json (as timm publishes) -> train -> export -> the archived handler: the
    checkpoint and preprocess.json carry the backbone's mean/std, and the served answer is the eager model's."""
    published = tmp_path / "backbone"
    published.mkdir()
    state = backbone()
    save_file(state, str(published / "model.safetensors"))
    config = {"architecture": ARCH, "pretrained_cfg": {**BACKBONE_NORM, "num_classes": FILE_CLASSES}}
    (published / "config.json").write_text(json.dumps(config))
    run = tiny_config(
        tiny_leaves,
        tmp_path,
        f"model.pretrained={published / 'model.safetensors'}",
        "model.name=resnet10t",
        "schedule.epochs=1",
        "optim.lr=0.0003",
        "logging.tensorboard=false",
    )
    with caplog.at_level(logging.INFO, logger="leafnet.pretrained"):
        train(run)
    assert "classifier skipped for shape (re-initialised): fc." in caplog.text
    checkpoint_path = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(checkpoint_path)
    assert {k: checkpoint["preprocess"][k] for k in BACKBONE_NORM} == BACKBONE_NORM
    trained = checkpoint["model"]["layer3.0.conv2.weight"].flatten()
    source = state["layer3.0.conv2.weight"].flatten()
    assert torch.nn.functional.cosine_similarity(trained, source, dim=0) > 0.99  # fine-tuned from the file

    base = tmp_path / "export"
    export = export_config(checkpoint_path, base, served=["torchscript"], parity_images=8, drift_reference_images=16)
    report = exporter.export_checkpoint(export, log=lambda _: None)
    model_dir, _ = unpack(base / "model_store" / next(iter(report["archives"])), tmp_path / "unpacked")
    archived = json.loads((model_dir / "preprocess.json").read_text())
    assert {k: archived[k] for k in BACKBONE_NORM} == BACKBONE_NORM

    handler = ArchivedHandler(model_dir)
    images = sorted((tiny_leaves / "test").rglob("*.png"))[:3]
    answers = handler([{"body": p.read_bytes()} for p in images])
    model = model_from_checkpoint(checkpoint)
    transform = eval_transform(PreprocessSpec.from_dict(checkpoint["preprocess"]))
    temperature = report["calibration"]["temperature"]  # the archived logits carry it
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
        probabilities = (model(batch) / temperature).softmax(1)
    for answer, expected in zip(answers, probabilities, strict=True):
        top = answer["predictions"][0]
        assert top["index"] == expected.argmax().item()
        assert top["probability"] == pytest.approx(expected.max().item(), abs=1e-5)


@pytest.mark.slow
def test_a_resumed_fine_tune_needs_neither_the_weights_file_nor_its_config(tiny_leaves, tmp_path):
    """A preemptible job: the weights file (or its config.json) may be gone or changed by the time the run
    resumes; the checkpoint holds every weight and the preprocessing the run began with."""
    published = tmp_path / "backbone"
    published.mkdir()
    save_file(backbone(), str(published / "model.safetensors"))
    config = {"architecture": ARCH, "pretrained_cfg": {**BACKBONE_NORM, "num_classes": FILE_CLASSES}}
    (published / "config.json").write_text(json.dumps(config))
    common = [f"model.pretrained={published / 'model.safetensors'}", "model.name=resnet10t", "schedule.epochs=2"]
    train(tiny_config(tiny_leaves, tmp_path, *common, "train.stop_after_epoch=0", "logging.tensorboard=false"))
    (published / "model.safetensors").unlink()
    (published / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": [0, 0, 0], "std": [1, 1, 1]}}))
    train(tiny_config(tiny_leaves, tmp_path, *common, "train.resume=auto", "logging.tensorboard=false"))
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 1 and {k: checkpoint["preprocess"][k] for k in BACKBONE_NORM} == BACKBONE_NORM


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.drop_path_rate=1.5", "model.drop_path_rate must be in [0, 1)"),
        ("data.crop_pct=0", "data.crop_pct must be in (0, 1]"),
        ("data.interpolation=foo", "data.interpolation must be one of bilinear, bicubic, nearest, lanczos"),
    ],
)
def test_preprocessing_and_drop_path_values_are_checked_before_any_work(override, message, tiny_leaves, tmp_path):
    with pytest.raises(LeafnetError, match=re.escape(message)):
        train(tiny_config(tiny_leaves, tmp_path, override))
    assert not (tmp_path / "run").exists()


def test_the_interpolations_a_spec_may_name_are_the_ones_the_handler_maps():
    assert set(INTERPOLATIONS) == set(HANDLER_INTERPOLATION)
