"""Confidences and answers: the one softmax of leafnet's served and offline answers, and their `unknown`."""

from __future__ import annotations

import numpy as np

DEFAULT_TOPK = 5  # classes per answer when model-config.yaml's handler section sets no topk


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis (any leading shape), computed stably in float64."""
    shifted = np.exp(np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def top_k(
    logits: np.ndarray, labels: list[str], k: int, version: str, score: float | None = None, calibration=None
) -> dict:
    """The answer to one image: the k most probable classes, most probable first (ties by index); `confidence`,
    the top-1 probability (calibrated when the model was: its logits carry the temperature); and `unknown`,
    whether the model's out-of-distribution `score` is above the calibration's threshold (None when the
    model has no calibration: an archive or checkpoint from before it)."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, kind="stable")[:k]
    predictions = [
        {"label": labels[i], "index": int(i), "probability": round(float(probabilities[i]), 6)} for i in order
    ]
    answer = {"predictions": predictions, "model_version": version, "confidence": predictions[0]["probability"]}
    if calibration is None or score is None:
        return {**answer, "unknown": None}
    finite = bool(np.isfinite(score))  # NaN or inf would be invalid JSON: null, and unknown (is_unknown)
    ood_score = round(float(score), 4) if finite else None
    return {**answer, "unknown": calibration.is_unknown(float(score)), "ood_score": ood_score}
