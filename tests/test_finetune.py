"""Fine-tuning controls (leafnet/finetune.py, docs/finetune.md): layer-wise lr decay and the classifier's lr
scale through the schedule, freezing and thawing (resumed exactly across the boundary), mixup/cutmix with
honest train metrics, early stopping and the kept top checkpoints; one DDP run on two gloo processes."""

import copy
import logging
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import leafnet.train
from leafnet.checkpoint import load_checkpoint, rank_top
from leafnet.distributed import DistInfo
from leafnet.engine import StepConfig, evaluate, train_one_epoch
from leafnet.errors import LeafnetError
from leafnet.evaluation import EvalConfig, evaluate_checkpoint
from leafnet.finetune import Mixer, build_optimizer
from leafnet.train import Trainer, validate_config
from leafnet.train import main as train
from leafnet.train_config import MixupSection, OptimSection
from tests.conftest import REPO, tiny_config
from tests.test_train import assert_equal_states, metrics

CPU = torch.device("cpu")
MIXING = ("mixup.mixup_alpha=0.4", "mixup.cutmix_alpha=1.0", "mixup.switch_prob=0.5")


def resnet10t_scale(name: str, layer_decay: float, head: float) -> float:
    """By hand: resnet10t's layers as timm groups them (stem, one block per stage, classifier)."""
    depth = {"conv1": 5, "bn1": 5, "layer1": 4, "layer2": 3, "layer3": 2, "layer4": 1, "fc": 0}[name.split(".")[0]]
    return (layer_decay**depth if layer_decay else 1.0) * (head if name.startswith("fc.") else 1.0)


@pytest.mark.parametrize(("layer_decay", "head"), [(0.7, 10.0), (0.0, 5.0)])
def test_layer_decay_and_head_scale_give_each_group_its_lr_through_the_schedule(
    tiny_leaves, tmp_path, layer_decay, head
):
    cfg = tiny_config(
        tiny_leaves, tmp_path, f"optim.layer_decay={layer_decay}", f"optim.head_lr_scale={head}", "optim.lr=0.01"
    )
    trainer = Trainer(cfg, DistInfo(), CPU)
    model, optimizer, scheduler = trainer.model, trainer.optimizer, trainer.scheduler
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    assert len(group_of) == len(list(model.parameters()))  # every parameter once
    for step in range(6):  # the warm-up (1-2 steps here) and into the cosine
        factor = trainer.lr_factor(step)
        for name, parameter in model.named_parameters():
            group = group_of[id(parameter)]
            expected = 0.01 * resnet10t_scale(name, layer_decay, head) * factor
            assert group["lr"] == pytest.approx(expected, rel=1e-12), (step, name)
            assert group["weight_decay"] == (0.0 if parameter.ndim <= 1 else cfg.optim.weight_decay), name
        optimizer.step()  # no gradients: nothing moves, but the scheduler's order is kept
        scheduler.step()

    # The optimizer applies them: a first step of timm's SGD (Nesterov) moves each parameter by its own
    # group's lr x (1 + momentum) x grad.
    plain = ("optim.name=sgd", "optim.momentum=0.9", "optim.weight_decay=0")
    sgd = tiny_config(tiny_leaves, tmp_path, f"optim.layer_decay={layer_decay}", f"optim.head_lr_scale={head}", *plain)
    trainer = Trainer(sgd, DistInfo(), CPU)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    images, targets = next(iter(trainer.train_loader))
    nn.functional.cross_entropy(trainer.model(images), targets).backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
    trainer.optimizer.step()
    lr = sgd.optim.lr * trainer.lr_factor(0)
    for name, parameter in trainer.model.named_parameters():
        step = lr * resnet10t_scale(name, layer_decay, head) * 1.9 * grads[name]
        assert torch.allclose(parameter.detach(), before[name] - step, rtol=0, atol=1e-7), name


def test_with_every_control_off_the_optimizer_is_timms_plain_one(tiny_leaves, tmp_path):
    trainer = Trainer(tiny_config(tiny_leaves, tmp_path), DistInfo(), CPU)
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [0.0, 0.05]
    assert not any("lr_scale" in group for group in trainer.optimizer.param_groups)
    assert trainer.freeze is None and trainer.mix is None and isinstance(trainer.criterion, nn.CrossEntropyLoss)


def record_epochs(monkeypatch) -> list[dict]:
    """Per trained epoch: the parameters that require grad and whether the stem's BatchNorm trains."""
    seen = []
    real = leafnet.train.train_one_epoch

    def recording(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        module = getattr(model, "module", model)
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        seen.append({"epoch": args[6], "trainable": trainable, "stem_bn_training": module.bn1.training})
        return result

    monkeypatch.setattr(leafnet.train, "train_one_epoch", recording)
    return seen


@pytest.mark.slow
def test_freeze_trains_the_classifier_alone_then_everything_and_resumes_exactly_across_the_thaw(
    tiny_leaves, tmp_path, monkeypatch, caplog
):
    """Mixup, cutmix and balanced sampling ride along: the resumed run must match bit for bit with them on."""
    common = ("schedule.epochs=3", "train.freeze_epochs=1", "train.balanced_sampling=true", *MIXING)
    initial, names = {}, set()
    create = leafnet.train.create_model

    def remembering(*args, **kwargs):
        model = create(*args, **kwargs)
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        names.update(name for name, _ in model.named_parameters())
        return model

    monkeypatch.setattr(leafnet.train, "create_model", remembering)
    seen = record_epochs(monkeypatch)
    with caplog.at_level(logging.INFO, logger="leafnet.train"):
        train(tiny_config(tiny_leaves, tmp_path / "a", *common))
    assert "epoch 1: the classifier alone trains (2,052 of" in caplog.text
    assert "epoch 2: every parameter trains from here" in caplog.text
    head = {"fc.weight", "fc.bias"}
    assert [s["trainable"] for s in seen] == [head, names, names]
    assert [s["stem_bn_training"] for s in seen] == [False, True, True]  # frozen statistics stay put

    train(tiny_config(tiny_leaves, tmp_path / "b", *common, "train.stop_after_epoch=0"))  # the end of the freeze
    frozen = load_checkpoint(tmp_path / "b/run/checkpoints/last.pt")
    for key, value in frozen["model"].items():
        changed = not torch.equal(value, initial[key])
        assert changed == key.startswith("fc."), key  # weights, BatchNorm statistics and counters alike
    stepped = set(frozen["optimizer"]["state"])  # optimizer state only for what was stepped: fc's two tensors
    assert len(stepped) == 2

    train(tiny_config(tiny_leaves, tmp_path / "b", *common, "train.resume=auto"))
    a, b = metrics(tmp_path / "a/run"), metrics(tmp_path / "b/run")
    for column in ("lr", "train_loss", "train_top1", "val_loss", "val_top1"):
        assert [r[column] for r in a] == [r[column] for r in b], column
    last_a = load_checkpoint(tmp_path / "a/run/checkpoints/last.pt")
    last_b = load_checkpoint(tmp_path / "b/run/checkpoints/last.pt")
    for key in ("model", "optimizer", "scheduler"):
        assert_equal_states(last_a[key], last_b[key], key)
    assert all(not torch.equal(last_a["model"][k], initial[k]) for k in initial if k.endswith("conv.weight"))


def test_mixer_is_seeded_per_batch_keeps_numpy_state_and_handles_an_odd_batch():
    mixer = Mixer(MixupSection(mixup_alpha=1.0, cutmix_alpha=1.0), 0.1, num_classes=3, seed=7, rank=0)
    images, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    np.random.seed(1)
    expected_next = np.random.random()
    np.random.seed(1)
    a_images, a_soft = mixer(images.clone(), labels, epoch=2, batch=3)
    assert np.random.random() == expected_next  # the caller's numpy stream is untouched
    b_images, b_soft = mixer(images.clone(), labels, epoch=2, batch=3)
    assert torch.equal(a_images, b_images) and torch.equal(a_soft, b_soft)  # a resumed batch mixes alike
    c_images, _ = mixer(images.clone(), labels, epoch=2, batch=4)
    other_rank = Mixer(MixupSection(mixup_alpha=1.0, cutmix_alpha=1.0), 0.1, 3, seed=7, rank=1)
    d_images, _ = other_rank(images.clone(), labels, epoch=2, batch=3)
    assert not torch.equal(a_images, c_images) and not torch.equal(a_images, d_images)
    assert a_soft.shape == (5, 3) and torch.allclose(a_soft.sum(1), torch.ones(5))
    assert torch.equal(a_images[4], images[4])  # the odd one out keeps its image and its smoothed label
    assert torch.allclose(a_soft[4], torch.tensor([0.1 / 3, 1 - 0.1 + 0.1 / 3, 0.1 / 3]))


def test_train_top1_under_mixing_counts_the_class_with_the_largest_share():
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    model, criterion = nn.Linear(4, 3), SoftTargetCrossEntropy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the predictions stay those of these weights
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(4)]
    mix = Mixer(MixupSection(mixup_alpha=1.0), 0.0, num_classes=3, seed=0, rank=0)
    hits, losses, count = 0, 0.0, 0
    with torch.no_grad():
        for batch, (images, labels) in enumerate(loader):
            mixed, soft = mix(images.clone(), labels, 1, batch)
            logits = model(mixed)
            hits += (logits.argmax(1) == soft.argmax(1)).sum().item()
            losses += criterion(logits, soft).item() * len(labels)
            count += len(labels)
    result = train_one_epoch(model, criterion, optimizer, scheduler, loader, CPU, StepConfig(), epoch=1, mix=mix)
    assert result.top1 == hits / count and result.loss == pytest.approx(losses / count, rel=1e-6)


def scripted_validation(monkeypatch, scores: list[float]) -> None:
    """The real evaluation with its top-1 replaced, epoch after epoch, by `scores`."""
    scripted = iter(scores)
    monkeypatch.setattr(leafnet.train, "evaluate", lambda *a, **k: replace(evaluate(*a, **k), top1=next(scripted)))


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_resume_respects_it(tiny_leaves, tmp_path, monkeypatch, caplog):
    scores = [0.25, 0.5, 0.5, 0.25, 0.75, 1.0]  # epochs 2 and 3 do not beat 0.5: patience 2 stops after 3
    args = ("schedule.epochs=6", "train.early_stop_patience=2", "logging.tensorboard=false")
    scripted_validation(monkeypatch, scores)
    with caplog.at_level(logging.INFO, logger="leafnet.train"):
        summary = train(tiny_config(tiny_leaves, tmp_path / "a", *args))
    assert "early stop after epoch 4/6: val top-1 has not beaten 50.00% in 2 validations" in caplog.text
    assert summary["early_stopped_after_epoch"] == 3 and summary["best_val_top1"] == 0.5
    assert summary["val_top1"] == 0.25  # the last validation's, as metrics.csv's last row
    rows = metrics(tmp_path / "a/run")
    assert [float(r["val_top1"]) for r in rows] == scores[:4]
    last = load_checkpoint(tmp_path / "a/run/checkpoints/last.pt")
    assert last["epoch"] == 3 and last["stale_validations"] == 2
    assert load_checkpoint(tmp_path / "a/run/checkpoints/best.pt")["epoch"] == 1

    # Interrupted after epoch 2 (one stale validation), resumed: it stops where the whole run stopped.
    scripted_validation(monkeypatch, scores)
    train(tiny_config(tiny_leaves, tmp_path / "b", *args, "train.stop_after_epoch=2"))
    scripted_validation(monkeypatch, scores[3:])
    summary = train(tiny_config(tiny_leaves, tmp_path / "b", *args, "train.resume=auto"))
    assert summary["early_stopped_after_epoch"] == 3
    assert [r["val_top1"] for r in metrics(tmp_path / "b/run")] == [r["val_top1"] for r in rows]
    # Resuming a run that stopped early trains nothing more; a larger patience continues it.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="leafnet.train"):
        summary = train(tiny_config(tiny_leaves, tmp_path / "b", *args, "train.resume=auto"))
    assert "stopped early after epoch 4 (no better val top-1 in 2 validations): nothing to train" in caplog.text
    assert summary["early_stopped_after_epoch"] == 3 and len(metrics(tmp_path / "b/run")) == 4
    scripted_validation(monkeypatch, scores[4:])
    summary = train(tiny_config(tiny_leaves, tmp_path / "b", "schedule.epochs=6", "train.resume=auto"))
    assert "early_stopped_after_epoch" not in summary and summary["best_val_top1"] == 1.0
    assert len(metrics(tmp_path / "b/run")) == 6


@pytest.mark.slow
def test_keep_top_keeps_the_n_best_checkpoints_and_prunes_the_rest(tiny_leaves, tmp_path, monkeypatch):
    scores = [0.25, 0.75, 0.5, 0.75, 1.0]
    scripted_validation(monkeypatch, scores)
    train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=5", "checkpoint.keep_top=2", "logging.tensorboard=false"))
    top = tmp_path / "run/checkpoints/top"
    # epoch 3 ties epoch 1 at 0.75: the earlier one stays, as best.pt would keep it
    assert sorted(p.name for p in top.iterdir()) == ["epoch001_top1_0.7500.pt", "epoch004_top1_1.0000.pt"]
    for name, epoch in (("epoch001_top1_0.7500.pt", 1), ("epoch004_top1_1.0000.pt", 4)):
        kept = load_checkpoint(top / name)
        assert kept["epoch"] == epoch and kept["metrics"]["val_top1"] == scores[epoch]
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert best["epoch"] == 4 and best["top_checkpoints"][0]["epoch"] == 4
    assert [e["epoch"] for e in load_checkpoint(tmp_path / "run/checkpoints/last.pt")["top_checkpoints"]] == [4, 1]
    # a resume whose optimizer would group the parameters otherwise is refused in one line
    with pytest.raises(LeafnetError, match="its optimizer groups the parameters otherwise; use the same"):
        train(tiny_config(tiny_leaves, tmp_path, "optim.layer_decay=0.7", "train.resume=auto"))
    # a fresh run under the same name (no resume) starts its own top list: the old run's files go
    (top / "notes.txt").write_text("not a checkpoint: left alone")
    scripted_validation(monkeypatch, [0.5, 0.25])
    train(tiny_config(tiny_leaves, tmp_path, "schedule.epochs=2", "checkpoint.keep_top=1", "logging.tensorboard=false"))
    assert sorted(p.name for p in top.iterdir()) == ["epoch000_top1_0.5000.pt", "notes.txt"]


def test_rank_top_orders_by_score_then_epoch():
    kept, added, dropped = rank_top([], 0, 0.5, 2)
    assert added == kept[0] and dropped == []
    kept, added, dropped = rank_top(kept, 1, 0.5, 2)
    kept, added, dropped = rank_top(kept, 2, 0.5, 2)
    assert added is None and dropped == [] and [e["epoch"] for e in kept] == [0, 1]  # a tie does not displace
    kept, added, dropped = rank_top(kept, 3, 0.6, 2)
    assert [e["epoch"] for e in kept] == [3, 0] and [e["file"] for e in dropped] == ["epoch001_top1_0.5000.pt"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.layer_decay=1.5", "optim.layer_decay must be in"),
        ("optim.head_lr_scale=0", "optim.head_lr_scale above 0"),
        ("train.freeze_epochs=-1", "train.freeze_epochs must be at least 0"),
        ("checkpoint.keep_top=-2", "checkpoint.keep_top must be at least 0"),
        ("mixup.prob=2", "mixup.prob and mixup.switch_prob must be in"),
    ],
)
def test_bad_finetune_values_fail_in_one_line(tiny_leaves, tmp_path, override, message):
    with pytest.raises(LeafnetError, match=message):
        validate_config(tiny_config(tiny_leaves, tmp_path, override))


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_with_freeze_mixing_and_balanced_sampling_keeps_exact_metrics(tiny_leaves, tmp_path):
    """Two gloo processes: the classifier alone in epoch 0 (the trunk bit for bit as initialised, on the
    checkpoint rank 0 wrote), everything in epoch 1 under a rebuilt DDP wrapper; validation equal to one
    process's evaluation of the same checkpoint; train top-1 a count over exactly one epoch's images."""
    args = ["train.freeze_epochs=1", "train.balanced_sampling=true", "optim.layer_decay=0.7", *MIXING]
    args += ["checkpoint.keep_top=2", "data.batch_size=4", "data.eval_batch_size=3", "logging.tensorboard=false"]
    cfg = tiny_config(tiny_leaves, tmp_path, *args)
    initial = copy.deepcopy(Trainer(cfg, DistInfo(), CPU).model.state_dict())  # rank 0 starts from this
    overrides = [f"data.root={tiny_leaves}", f"train.output_dir={tmp_path}", "train.name=run", "data.workers=0"]
    overrides += ["schedule.epochs=2", "train.threads=1", "data.input_size=0", "amp.dtype=none", *args]  # as evaluate
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [*command, str(REPO / "scripts/train.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and "epoch 2: every parameter trains from here" in result.stdout
    rows = metrics(tmp_path / "run")
    for row in rows:  # 24 train images: 12 balanced draws per rank, each counted once (csv: 6 digits)
        assert float(row["train_top1"]) * 24 == pytest.approx(round(float(row["train_top1"]) * 24), abs=1e-4)
    checkpoints = tmp_path / "run/checkpoints"
    [after_freeze] = [p for p in (checkpoints / "top").iterdir() if p.name.startswith("epoch000_")]
    frozen = load_checkpoint(after_freeze)["model"]
    assert {k for k in frozen if not torch.equal(frozen[k], initial[k])} == {"fc.weight", "fc.bias"}
    single = evaluate_checkpoint(
        EvalConfig(checkpoint=str(checkpoints / "last.pt"), split="val", workers=0, output=str(tmp_path / "single")),
        log=lambda _: None,
    )
    assert float(rows[-1]["val_top1"]) == pytest.approx(single["top1"], abs=1e-6)
    assert float(rows[-1]["val_loss"]) == pytest.approx(single["loss"], abs=1e-4)
    last = load_checkpoint(checkpoints / "last.pt")["model"]
    assert any(not torch.equal(last[k], initial[k]) for k in last if k.startswith("conv1"))  # thawed and trained


def test_a_resume_with_other_layer_decay_is_refused_though_the_groups_are_the_same_size(tiny_leaves, tmp_path):
    common = ["schedule.epochs=2", "logging.tensorboard=false"]
    train(tiny_config(tiny_leaves, tmp_path, *common, "optim.layer_decay=0.7", "train.stop_after_epoch=0"))
    with pytest.raises(LeafnetError, match="its optimizer groups the parameters otherwise"):
        train(tiny_config(tiny_leaves, tmp_path, *common, "optim.layer_decay=0.5", "train.resume=auto"))


@pytest.mark.parametrize("name, layer_decay", [("adamw", 0.0), ("sgd", 0.0), ("adamw", 0.7)])
def test_the_optimizer_is_fused_on_the_cpu_and_steps_like_the_foreach_one(name, layer_decay):
    torch.manual_seed(0)
    # no bias before the norm: its gradient is rounding noise, which Adam's first steps scale up to the lr
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    twin = copy.deepcopy(model)
    section = OptimSection(name=name, layer_decay=layer_decay)
    fused = build_optimizer(model, section)
    assert all(group["fused"] for group in fused.param_groups)
    foreach = build_optimizer(twin, section)
    for group in foreach.param_groups:
        group["fused"] = False
    images, targets = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    for net, optimizer in ((model, fused), (twin, foreach)):
        for _ in range(3):
            nn.functional.cross_entropy(net(images), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    unfused = build_optimizer(copy.deepcopy(model), replace(section, fused=False))
    assert not any(group["fused"] for group in unfused.param_groups)


def test_a_resume_steps_with_this_runs_optimizer_kernel(tiny_leaves, tmp_path):
    # load_state_dict would restore the checkpoint's foreach setting under an optimizer built fused: a float16
    # GradScaler then fails the first step, and otherwise the fused kernel is silently lost
    train(tiny_config(tiny_leaves, tmp_path, "optim.fused=false", "train.stop_after_epoch=0"))
    trainer = Trainer(tiny_config(tiny_leaves, tmp_path, "train.resume=auto"), DistInfo(), CPU)
    assert trainer.start_epoch == 1
    assert all(group["fused"] is True and group["foreach"] is None for group in trainer.optimizer.param_groups)
    back = Trainer(tiny_config(tiny_leaves, tmp_path, "train.resume=auto", "optim.fused=false"), DistInfo(), CPU)
    assert not any(group["fused"] for group in back.optimizer.param_groups)
