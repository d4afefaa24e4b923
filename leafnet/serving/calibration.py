"""calibration.json: what turns a model's second output into an `unknown` answer. Export writes it, the handler
and offline prediction read it; this module is the one owner of its format.

The temperature itself is inside the model file (its `logits` output is already divided by it), so a softmax
of the logits is the calibrated confidence; the file records it for people and reports. What the file adds is
the threshold on the model's `ood_score` output above which an answer is `unknown`: one per model file,
because each variant (a quantized one especially) was measured on the validation split on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CALIBRATION_FILE = "calibration.json"
FORMAT = 1
UNKNOWN_POLICIES = ("flag", "refuse")  # flag: answer with unknown=true; refuse: 422 with a JSON reason


@dataclass(frozen=True)
class Calibration:
    """One model file's calibration: the temperature baked into its logits, its score and its threshold."""

    temperature: float
    score: str
    threshold: float
    accept: float  # the fraction of in-distribution images the threshold was chosen to accept

    def is_unknown(self, score: float) -> bool:
        return not score <= self.threshold  # NaN too: nothing trustworthy came out

    @classmethod
    def read(cls, path: Path, model_file: str) -> Calibration | None:
        """The calibration of `model_file` from calibration.json at `path`; None when the file is absent (an
        archive from before calibration) or has no threshold for that model file."""
        if not path.is_file():
            return None
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT:
            raise ValueError(f"{path}: calibration format {document.get('format')!r}, this code reads {FORMAT}")
        threshold = document["thresholds"].get(model_file)
        if threshold is None:
            return None
        return cls(float(document["temperature"]), document["score"], float(threshold), float(document["accept"]))


def calibration_document(temperature: float, score: str, thresholds: dict[str, float], accept: float, **notes) -> dict:
    """calibration.json's content: `thresholds` maps a model file's name to its threshold; `notes` are kept
    for people (how the threshold was chosen, on which split)."""
    return {
        "format": FORMAT,
        "temperature": temperature,
        "score": score,
        "accept": accept,
        "thresholds": thresholds,
        **notes,
    }


def check_policy(policy: str) -> str:
    if policy not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown_policy {policy!r}: choose from {', '.join(UNKNOWN_POLICIES)}")
    return policy
