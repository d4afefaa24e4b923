"""Offline prediction benchmark: `Predictor` against the plain in-process onnxruntime loop it must keep up
with, side by side in one run, on the same files, variant, batch size and threads.

The plain loop reads, decodes and preprocesses a batch one image after another (the handler's own
Preprocessor), then runs the session: what a script over onnxruntime would do. Predictor decodes in a thread
pool while the model runs and answers each image (softmax, top-k). Both include reading the files (from
the page cache after the warm-up). Rounds alternate plain, Predictor, plain, ...; the best round of each
side counts, so a busy moment of a shared machine costs one round, not the comparison.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from leafnet.errors import LeafnetError
from leafnet.fsutil import write_json
from leafnet.predict import Predictor
from leafnet.predict_inputs import collect_inputs
from leafnet.serving.runtime import available_cpus, onnx_session

logger = logging.getLogger(__name__)

REPORT = "predict_benchmark.json"


@dataclass
class PredictBenchConfig:
    model: str = "exports/leafnet"  # an export directory
    variant: str = "onnx-int8"  # one of its ONNX variants (the plain loop runs onnxruntime)
    images: str = "data/processed/synthetic/test"  # a folder of images (recursive) or a .txt list of them
    batch_size: int = 32  # images per forward pass, both sides
    threads: int = 0  # onnxruntime intra-op threads, both sides; 0: one per core
    decode_threads: int = 0  # Predictor's decoding threads; 0: its default (one per core but one)
    images_per_round: int = 1024  # the images, cycled to this many per timed round
    rounds: int = 5  # timed rounds per side, alternating; the best of each side counts
    output: str = "runs/benchmark_predict"  # where predict_benchmark.json goes


def plain_loop(session, preprocessor, paths: list[Path], batch_size: int) -> None:
    """The reference: each batch read, decoded and preprocessed in turn, then run."""
    input_name = session.get_inputs()[0].name
    for start in range(0, len(paths), batch_size):
        batch = [preprocessor.tensor(preprocessor.fitted(p.read_bytes())[0]) for p in paths[start : start + batch_size]]
        session.run(None, {input_name: np.stack(batch)})


def run_predict_benchmark(config: PredictBenchConfig, log=logger.info) -> dict:
    if (
        min(config.batch_size, config.rounds, config.images_per_round) < 1
        or min(config.threads, config.decode_threads) < 0
    ):
        raise LeafnetError("batch_size, rounds and images_per_round must be at least 1, threads not negative")
    if not config.variant.startswith("onnx"):
        raise LeafnetError(f"variant={config.variant}: the plain loop runs onnxruntime, so pick an ONNX variant")
    found = collect_inputs([config.images], stdin=None)
    if not found:
        raise LeafnetError(f"no images under {config.images}")
    paths = [found[i % len(found)] for i in range(config.images_per_round)]
    threads = config.threads or available_cpus()
    predictor = Predictor.load(
        config.model,
        config.variant,
        threads=threads,
        batch_size=config.batch_size,
        decode_threads=config.decode_threads,
    )
    if predictor.model.model_file is None:
        raise LeafnetError(f"model={config.model}: the benchmark takes an export directory")
    session = onnx_session(predictor.model.model_file, threads)  # leafnet's session options, spinning: a process alone
    sides = {
        "plain": lambda: plain_loop(session, predictor.preprocessor, paths, config.batch_size),
        "predictor": lambda: predictor.predict(paths),
    }
    for run in sides.values():  # warm-up: sessions, thread pools, the page cache
        run()
    rounds: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(config.rounds):
        for side, run in sides.items():
            started = time.perf_counter()
            run()
            rounds[side].append(round(len(paths) / (time.perf_counter() - started), 1))
    best = {side: max(values) for side, values in rounds.items()}
    report = {
        "model": config.model,
        "variant": config.variant,
        "images": config.images,
        "distinct_images": len(found),
        "images_per_round": len(paths),
        "batch_size": config.batch_size,
        "threads": threads,
        "decode_threads": predictor.decode_threads,
        "images_per_s": best,
        "rounds_images_per_s": rounds,
        "ratio": round(best["predictor"] / best["plain"], 3),
        # each round's Predictor over the plain loop just before it: less exposed to one lucky round
        "median_round_ratio": round(
            statistics.median(mine / plain for mine, plain in zip(rounds["predictor"], rounds["plain"], strict=True)), 3
        ),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "available_cpus": available_cpus()},
        "versions": {"onnxruntime": onnxruntime.__version__},
    }
    output = Path(config.output)
    write_json(output / REPORT, report)
    log(
        f"bench predict: {config.variant}, batch {config.batch_size}, {threads} threads: plain onnxruntime loop "
        f"{best['plain']:.0f} images/s, Predictor {best['predictor']:.0f} images/s ({report['ratio']:.0%}; median "
        f"of the rounds' ratios {report['median_round_ratio']:.0%}) "
        f"-> {output / REPORT}"
    )
    return report
