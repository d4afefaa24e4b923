"""Load-test a running TorchServe: `leafnet bench serving [url=http://127.0.0.1:8080]
[archive=model_store/leafnet-onnx-int8.mar] [concurrency=[1,2,4,8,16]] [duration_s=10]`.

Closed-loop HTTP clients at each concurrency level: requests/s, p50/p90/p99 latency, errors, and the ratio
to the same archive's handler run in-process. Start the server first (leafnet serve start variant=onnx-int8).
worst_case=cost measures what the most expensive accepted images cost a worker (no server needed);
worst_case=load adds a level that sends them beside ordinary requests (docs/serving.md, Bounded cost per
request). Writes serving_benchmark.json and .md under output= (runs/benchmark_serving).
"""

from leafnet.bench.serving import ServingBenchConfig, run_serving_benchmark
from leafnet.config import load_config


def main(argv: list[str]) -> None:
    run_serving_benchmark(load_config(ServingBenchConfig, argv))


CONFIG = ServingBenchConfig  # the options and their defaults (`leafnet bench serving --help` lists them)
