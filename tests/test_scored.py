"""The exported graph's head: calibrated logits and each out-of-distribution score, against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from leafnet.errors import LeafnetError
from leafnet.export.scored import (
    SCORES,
    OodHead,
    ScoredClassifier,
    all_scores,
    features_and_logits,
    fit_feature_stats,
    ledoit_wolf,
)


def _clusters(rng, classes=3, per_class=40, dim=6, spread=0.3):
    centres = rng.normal(0, 3, (classes, dim))
    targets = np.repeat(np.arange(classes), per_class)
    features = centres[targets] + rng.normal(0, spread, (len(targets), dim))
    return features.astype(np.float32), targets, centres


def test_ledoit_wolf_shrinks_towards_a_scaled_identity_and_stays_positive_definite():
    rng = np.random.default_rng(0)
    few = rng.normal(size=(10, 40))  # fewer rows than dimensions: the sample covariance is singular
    covariance, shrinkage = ledoit_wolf(few - few.mean(axis=0))
    assert 0 < shrinkage <= 1
    assert np.linalg.eigvalsh(covariance).min() > 0
    many = rng.normal(size=(20000, 4)) @ np.diag([1.0, 2.0, 3.0, 4.0])
    covariance, shrinkage = ledoit_wolf(many - many.mean(axis=0))
    assert shrinkage < 0.05  # plenty of data: little shrinkage, close to the truth
    np.testing.assert_allclose(np.diag(covariance), [1, 4, 9, 16], rtol=0.1)


def test_mahalanobis_score_is_the_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(1)
    features, targets, _ = _clusters(rng)
    stats = fit_feature_stats(features, targets, 3)
    means = np.stack([features[targets == c].mean(axis=0) for c in range(3)]).astype(np.float64)
    precision = stats.whitening @ stats.whitening.T
    probe = rng.normal(0, 3, (5, features.shape[1])).astype(np.float32)
    head = OodHead("mahalanobis", 1.0, stats)
    with torch.inference_mode():
        _, score = head(torch.from_numpy(probe), torch.zeros(5, 3))
    direct = [min((x - m) @ precision @ (x - m) for m in means) for x in probe.astype(np.float64)]
    np.testing.assert_allclose(score.numpy(), direct, rtol=1e-3)


def test_msp_and_energy_scores_and_the_temperature():
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    features = torch.zeros(2, 4)
    calibrated, msp = OodHead("msp", 2.0)(features, logits)
    torch.testing.assert_close(calibrated, logits / 2)
    torch.testing.assert_close(msp, -torch.softmax(logits / 2, dim=1).amax(dim=1))
    _, energy = OodHead("energy", 2.0)(features, logits)
    torch.testing.assert_close(energy, -torch.logsumexp(logits, dim=1))
    assert msp[0] < msp[1] and energy[0] < energy[1]  # the confident row looks more in-distribution


def test_far_away_features_score_higher_than_the_training_clusters():
    rng = np.random.default_rng(2)
    features, targets, centres = _clusters(rng)
    stats = fit_feature_stats(features, targets, 3)
    near = centres + rng.normal(0, 0.3, centres.shape)
    far = centres * 4
    scores = all_scores(np.concatenate([near, far]).astype(np.float32), np.zeros((6, 3), np.float32), 1.0, stats)
    assert set(scores) == set(SCORES)
    assert scores["mahalanobis"][:3].max() < scores["mahalanobis"][3:].min()


def test_scored_classifier_gives_the_models_logits_over_the_temperature():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).eval()
    images = torch.randn(4, 3, 32, 32)
    features, logits = features_and_logits(model, [images.numpy()])
    stats = fit_feature_stats(np.tile(features, (2, 1)), np.array([0, 1, 2, 0] * 2), 3)
    scored = ScoredClassifier(model, OodHead("mahalanobis", 0.5, stats)).eval()
    with torch.inference_mode():
        calibrated, score = scored(images)
        raw = model(images)
    torch.testing.assert_close(calibrated, raw / 0.5)
    np.testing.assert_allclose(logits, raw.numpy(), rtol=1e-5, atol=1e-5)
    assert score.shape == (4,) and torch.isfinite(score).all()


def test_bad_settings_fail_in_one_line():
    with pytest.raises(LeafnetError, match="unknown ood score 'knn'"):
        OodHead("knn", 1.0)
    with pytest.raises(LeafnetError, match="needs the train split's feature statistics"):
        OodHead("mahalanobis", 1.0)
    with pytest.raises(LeafnetError, match="class 2 has none"):
        fit_feature_stats(np.zeros((4, 3)), np.array([0, 0, 1, 1]), 3)
    with pytest.raises(LeafnetError, match="no timm forward_features/forward_head: export needs its features"):
        ScoredClassifier(torch.nn.Linear(3, 3), OodHead("msp", 1.0))


def _graph_with_unnamed_nodes(path):
    """x -> Relu (unnamed) -> features; features -> Gemm -> logits; features -> MatMul -> ReduceSum -> ood_score."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    whitening = numpy_helper.from_array(np.eye(4, dtype=np.float32), "whitening")
    nodes = [
        helper.make_node("Relu", ["input"], ["features"]),  # no name, as some exporters write them
        helper.make_node("Gemm", ["features", "w"], ["logits"], name="classifier"),
        helper.make_node("MatMul", ["features", "whitening"], ["whitened"]),
        helper.make_node("ReduceSum", ["whitened"], ["ood_score"], keepdims=0, name="distance"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, [2])],
        initializer=[weights, whitening],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_the_score_and_what_it_shares_with_the_logits_stay_out_of_quantization(tmp_path):
    """score_nodes walks by node, not name: an unnamed node on the logits' path stops nothing; and the
    preprocessing names unnamed nodes, since the quantizers leave nodes out by name."""
    import onnx

    from leafnet.export.quantize import preprocess_for_quantization, score_nodes

    _graph_with_unnamed_nodes(tmp_path / "m.onnx")
    preprocess_for_quantization(tmp_path / "m.onnx", tmp_path / "prepared.onnx")
    nodes = {n.op_type: n.name for n in onnx.load(str(tmp_path / "prepared.onnx")).graph.node}
    assert all(nodes.values())
    # the score's own nodes, and the Relu and Gemm that produce or read the features the score reads
    assert set(score_nodes(tmp_path / "prepared.onnx")) == set(nodes.values())


def test_a_distilled_model_with_two_heads_is_refused_in_one_line():
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=32)
    with pytest.raises(LeafnetError, match="more than one classifier head"):
        ScoredClassifier(model, OodHead("msp", 1.0))
