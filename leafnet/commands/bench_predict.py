"""Benchmark offline prediction: `leafnet bench predict [model=exports/leafnet] [variant=onnx-int8]
[images=data/processed/synthetic/test] [batch_size=32]`.

Predictor (leafnet/predict.py) against a plain in-process onnxruntime loop that decodes each batch and then
runs it, side by side in one run on the same files, variant, batch size and threads: images/s of each and
their ratio. Writes predict_benchmark.json under output= (runs/benchmark_predict).
"""

from leafnet.bench.predict import PredictBenchConfig, run_predict_benchmark
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    run_predict_benchmark(load_config(PredictBenchConfig, argv))


CONFIG = PredictBenchConfig  # the options and their defaults (`leafnet bench predict --help` lists them)
