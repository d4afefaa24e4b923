"""Test-time augmentation for evaluation and offline prediction (`tta=none|flip`); never served.

flip: each image is answered twice, as it is and mirrored left to right, and the answer is the mean of the
two passes' softmax probabilities. The mirror is the preprocessed model input flipped along its width (NCHW's
last axis). That is the preprocessing of the mirrored image when every step is mirror-symmetric: PIL's
resize is; a centre crop, or the fit's letterbox or crop, is when the sizes it goes between differ by an
even number of pixels. So it is exact for the square images prepare writes under crop_pct 1 (the demo) or
0.875 at 224 px. Otherwise the two differ by a pixel: with crop_pct 0.95 at 224 px (235 -> 224) the crop
takes one pixel more on one side and the mirror pass sees the mirrored image's crop one resized pixel over;
for a photo with an odd letterbox margin, the mirror pass sees its fitted square mirrored, the picture one
pixel off where the mirrored photo's fit would put it. tests/test_tta.py checks these cases.

The two passes are combined as log-probabilities, log((softmax(a) + softmax(b)) / 2), which are logits of
the mean probabilities: a softmax of them gives those probabilities back, so evaluation's loss, top-k and
confusion matrix and the answers' top_k (leafnet.serving.answers) take them as they take a model's logits.
Probabilities rather than logits are averaged because an answer's confidences are probabilities: the
flip answer's is the mean of the two answers' own, neither pass outweighing the other by the scale of its
logits, and evaluation's loss is the likelihood of that mean.

Numpy only at the top: offline prediction with an ONNX model loads no torch; torch is imported for tensors.
"""

from __future__ import annotations

import math

import numpy as np

from leafnet.errors import LeafnetError

MODES = ("none", "flip")  # none: one pass, as served; flip: the mean with the mirrored image's pass


def checked_mode(mode: str) -> str:
    """The mode, or a one-line LeafnetError naming the modes."""
    if mode not in MODES:
        raise LeafnetError(f"unknown tta mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def mirrored(batch):
    """An NCHW batch (numpy array or torch tensor) flipped left to right."""
    if isinstance(batch, np.ndarray):
        return np.ascontiguousarray(batch[..., ::-1])
    return batch.flip(-1)


def mean_of_probabilities(plain, mirror):
    """The logits (log-probabilities) of the mean of two passes' softmax probabilities, class axis last:
    float64 for numpy arrays, float32 for torch tensors (on their device)."""
    if isinstance(plain, np.ndarray):
        return np.logaddexp(_log_softmax(plain), _log_softmax(mirror)) - math.log(2)
    import torch

    return torch.logaddexp(plain.float().log_softmax(-1), mirror.float().log_softmax(-1)) - math.log(2)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
