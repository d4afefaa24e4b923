"""Stratified, seeded train/val/test split: each class is shuffled and cut on its own."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def min_class_size(val_fraction: float, test_fraction: float) -> int:
    """Fewest images a class needs so that every split that is asked for gets at least one."""
    return 1 + (val_fraction > 0) + (test_fraction > 0)


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for a class of n images; each requested split gets at least one."""
    if n < min_class_size(val_fraction, test_fraction):
        raise ValueError(f"a class of {n} cannot be split into train/val/test")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    while n - n_val - n_test < 1:  # rounding up may leave no training image: give one back
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def stratified_split(labels: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """The split name of each item. A class's shuffle depends only on the seed and the class name,
    so adding or removing one class never moves the images of another."""
    assignment = [""] * len(labels)
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for label, indices in by_class.items():
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        order = [indices[i] for i in rng.permutation(len(indices))]
        n_train, n_val, _ = split_counts(len(order), val_fraction, test_fraction)
        for position, index in enumerate(order):
            if position < n_train:
                assignment[index] = "train"
            elif position < n_train + n_val:
                assignment[index] = "val"
            else:
                assignment[index] = "test"
    return assignment
