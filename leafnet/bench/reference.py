"""In-process references for the serving benchmark: the archive's own handler, timed without TorchServe.

Two bars per concurrency level, each timed right before and right after the level's load:
- single process: the handler as the machine's only worker (every core to its intra-op threads) fusing all
  `concurrency` in-flight images into one call: in-process onnxruntime throughput as a script gets it;
- parallel: as many processes as the server runs workers, each sized like a worker (cores / workers
  threads), timed at once on an equal share of the in-flight images; what the machine does with the
  server's parallelism, without HTTP, queueing or IPC. The handler decodes in Python, one image after
  another, so on a small machine this bar can be far above the single process.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path

import numpy as np

from leafnet.errors import LeafnetError
from leafnet.serving.harness import ArchivedHandler


def reference_throughput(handler: ArchivedHandler, images: list[bytes], batch: int, seconds: float) -> dict:
    """Images per second and median seconds per call of the in-process handler at one batch size."""
    for _ in range(3):
        handler([{"body": body} for body in images[:batch]])  # warm-up: first calls allocate
    durations, position = [], 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(durations) < 5:
        items = [{"body": images[(position + i) % len(images)]} for i in range(batch)]
        position += batch
        t0 = time.perf_counter()
        answers = handler(items)
        durations.append(time.perf_counter() - t0)
        if not all(isinstance(a, dict) for a in answers):
            raise LeafnetError(f"the in-process handler refused a benchmark image: {answers}")
    return {
        "batch": batch,
        "images_per_s": round(batch * len(durations) / sum(durations), 2),
        "median_call_ms": round(float(np.median(durations)) * 1000, 3),
        "calls": len(durations),
    }


def bracketed(before: dict, after: dict) -> dict:
    """One reference from its runs before and after a load: the means, and both throughputs."""
    merged = {key: value for key, value in before.items() if key not in ("images_per_s", "median_call_ms")}
    merged["images_per_s"] = round((before["images_per_s"] + after["images_per_s"]) / 2, 2)
    if "median_call_ms" in before:
        merged["median_call_ms"] = round((before["median_call_ms"] + after["median_call_ms"]) / 2, 3)
    merged["images_per_s_before"] = before["images_per_s"]
    merged["images_per_s_after"] = after["images_per_s"]
    return merged


def _worker(model_dir: str, images: list[bytes], connection) -> None:
    """One reference process: loads the handler as a server worker would, then times batches on request."""
    try:
        handler = ArchivedHandler(Path(model_dir))
        connection.send(("ready", None))
        while (job := connection.recv()) is not None:
            batch, seconds = job
            connection.send(("done", reference_throughput(handler, images, batch, seconds)))
    except Exception as error:  # the parent raises it with the reason
        connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        connection.close()


class ParallelReference:
    """`workers` copies of an unpacked archive's handler, each in its own (spawned) process, timed together."""

    def __init__(self, model_dir: Path, images: list[bytes], workers: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding onnxruntime threads
        self.connections, self.processes = [], []
        try:
            for _ in range(workers):
                parent, child = context.Pipe()
                process = context.Process(target=_worker, args=(str(model_dir), images, child), daemon=True)
                process.start()
                child.close()
                self.connections.append(parent)
                self.processes.append(process)
            for connection in self.connections:
                self._answer(connection)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _answer(connection):
        try:
            kind, value = connection.recv()
        except EOFError:
            raise LeafnetError("an in-process reference worker died (out of memory?)") from None
        if kind == "error":
            raise LeafnetError(f"in-process reference worker failed: {value}")
        return value

    def measure(self, concurrency: int, seconds: float) -> dict:
        """Images per second of min(workers, concurrency) processes at once, sharing `concurrency` images
        in flight (each batch ceil(concurrency / processes))."""
        processes = min(len(self.connections), concurrency)
        batch = math.ceil(concurrency / processes)
        for connection in self.connections[:processes]:
            connection.send((batch, seconds))
        results = [self._answer(connection) for connection in self.connections[:processes]]
        return {
            "processes": processes,
            "batch": batch,
            "images_per_s": round(sum(result["images_per_s"] for result in results), 2),
        }

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
                connection.close()
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()

    def __enter__(self) -> ParallelReference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
