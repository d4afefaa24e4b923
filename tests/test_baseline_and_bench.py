import io

import numpy as np
import pytest
from PIL import Image

from leafnet.baseline import BaselineConfig, run_baseline
from leafnet.bench.loader import LoaderBenchConfig, run_loader_benchmark
from leafnet.data.prepare import PrepareConfig, prepare


def test_linear_baseline_separates_a_linearly_separable_set(tmp_path):
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("bright", 200)):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(level + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            (tmp_path / "src" / name / f"{i}.png").write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    prepare(
        PrepareConfig(source="imagefolder", input=str(tmp_path / "src"), output=str(out), size=32, workers=1),
        log=lambda _: None,
    )
    result = run_baseline(BaselineConfig(data=str(out), l2=[1e-3], iterations=50), log=lambda _: None)
    assert result["test_top1"] == 1.0


@pytest.mark.slow
def test_loader_benchmark_reports_all_three_rates(prepared_synthetic, tmp_path):
    config = LoaderBenchConfig(
        data=str(prepared_synthetic), input_size=32, batch_size=8, workers=[0, 1], fed_workers=1, batches=3, warmup=1
    )
    result = run_loader_benchmark(config, log=lambda _: None)
    assert set(result["loader_images_per_s"]) == {"0", "1"}
    assert all(rate > 0 for rate in result["loader_images_per_s"].values())
    assert result["compute_images_per_s"] > 0
    assert 0 <= result["fed"]["data_wait_fraction"] < 1
    assert result["fed"]["fraction_of_compute_rate"] > 0
