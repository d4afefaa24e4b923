"""Shared fixtures: a small synthetic raw set and its prepared form, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from leafnet.data.prepare import PrepareConfig, prepare
from leafnet.data.synthetic import SyntheticConfig

REPO = Path(__file__).resolve().parents[1]

# 4 images per species with 25%/25% val/test fractions: 2 train, 1 val, 1 test per class.
TINY_SYNTHETIC = SyntheticConfig(per_species=4, seed=3, min_blade_px=60, max_blade_px=120)


def tiny_prepare_config(raw: Path, out: Path, **overrides) -> PrepareConfig:
    return PrepareConfig(
        source="synthetic",
        input=str(raw),
        output=str(out),
        size=48,
        val_fraction=0.25,
        test_fraction=0.25,
        workers=1,
        synthetic=TINY_SYNTHETIC,
        **overrides,
    )


@pytest.fixture(scope="session")
def prepared_synthetic(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("synthetic")
    config = tiny_prepare_config(base / "raw", base / "processed")
    prepare(config, log=lambda _: None)
    return base / "processed"
