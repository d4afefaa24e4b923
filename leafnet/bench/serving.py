"""Serving benchmark: closed-loop HTTP load on a running TorchServe, against the same archive in-process.

Each concurrency level runs `concurrency` clients for `warmup_s` + `duration_s`; every client sends one
image, waits for the answer, and sends the next (closed loop), over its own keep-alive connection.
Requests started during the warm-up are not counted. Latency is per request, end to end.

The reference is the archive's own handler run in this process, without TorchServe: decode, preprocess
and onnxruntime/TorchScript on the same images, every core to its intra-op threads, in batches of
`concurrency` images: everything the clients have in flight, fused into one call. So `ratio` is what
TorchServe's HTTP, queueing, IPC and batching choices (batchSize, workers) cost on top of the very code it
runs, and no server setting can lower the bar. The reference is measured while the server is idle, before
and after the load, and the ratio uses the mean of the two: a shared VM's speed drifts by several percent
within minutes. Client and server share this machine's cores, as they would on one VM.

`worst_case=cost` measures, in-process and without a server, what the most expensive images the handler
accepts cost a worker (leafnet/bench/worst_case.py); `worst_case=load` then adds a worst-case level:
`worst_case_clients` clients send those images while `worst_case_good_clients` send ordinary ones, whose
latency is compared with the same clients' alone right before, and the server's memory is sampled.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import tempfile
import threading
import time
import urllib.parse
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from leafnet.bench.reference import ParallelReference, bracketed, reference_throughput
from leafnet.bench.worst_case import TreeMemory, measure_costs, worst_case_images
from leafnet.errors import LeafnetError
from leafnet.export import packaged
from leafnet.export.archive import unpack_archive
from leafnet.export.naming import default_archive
from leafnet.fsutil import atomic_write_bytes, sha256_file, write_json
from leafnet.predict_inputs import IMAGE_SUFFIXES
from leafnet.serving.harness import ArchivedHandler
from leafnet.serving.preprocess import DEFAULT_PREPARE_TIMEOUT_S, Preprocessor

logger = logging.getLogger(__name__)


@dataclass
class ServingBenchConfig:
    url: str = "http://127.0.0.1:8080"  # TorchServe's inference address
    model: str = "leafnet"  # the model name the server serves
    # the archive the server serves: the in-process reference
    archive: str = field(default_factory=lambda: f"model_store/{default_archive('onnx-int8')}")
    images: str = "data/processed/synthetic/test"  # a folder of images, sent round robin
    max_images: int = 64  # request bodies cycled through
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # requests in flight, one level each
    duration_s: float = 10.0  # measured seconds per level
    warmup_s: float = 2.0  # unmeasured load before each level
    reference_s: float = 3.0  # seconds of in-process timing per batch size, before and again after the load
    token: str | None = None  # bearer token (GCE profile); default: none
    timeout_s: float = 30.0  # seconds before a request counts as an error
    output: str = "runs/benchmark_serving"  # where the reports go
    # off | cost: what the most expensive images the archive's handler accepts cost a worker, each prepared in a
    # fresh process (no server needed; the levels are skipped) | load: cost, then a worst-case level on the server
    worst_case: str = "off"
    worst_case_clients: int = 8  # clients sending the most expensive accepted images at once, closed loop
    worst_case_good_clients: int = 8  # clients of ordinary images, timed alone and then beside those
    worst_case_max_requests: int = 200  # the worst-case level ends after this many of them (or duration_s)
    # on the server's machine, its top process (the supervisor `leafnet serve` starts, TorchServe's java, a
    # container's init): the worst-case level samples the memory (PSS) of it and its descendants; 0: not measured
    server_pid: int = 0
    # worst_case=cost without an archive: this preprocess.json, with the packaged model-config.yaml's options
    preprocess: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    latencies_ms: list[float]

    def summary(self) -> dict:
        latencies = np.asarray(self.latencies_ms or [float("nan")])
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests / self.seconds, 2) if self.seconds else 0.0,
            "p50_ms": round(float(p50), 2),
            "p90_ms": round(float(p90), 2),
            "p99_ms": round(float(p99), 2),
        }


WORST_CASE_MODES = ("off", "cost", "load")


def _validate(config: ServingBenchConfig) -> None:
    if config.worst_case not in WORST_CASE_MODES:
        raise LeafnetError(f"worst_case must be one of {', '.join(WORST_CASE_MODES)}, got {config.worst_case!r}")
    if (not config.concurrency and config.worst_case == "off") or min(config.concurrency, default=1) < 1:
        raise LeafnetError("concurrency must list levels of at least 1 (it may be empty with worst_case)")
    if min(config.worst_case_clients, config.worst_case_good_clients, config.worst_case_max_requests) < 1:
        raise LeafnetError("worst_case_clients, worst_case_good_clients and worst_case_max_requests must be >= 1")
    if config.preprocess and config.worst_case != "cost":
        raise LeafnetError("preprocess= is for worst_case=cost, which needs no archive")
    if config.duration_s <= 0 or config.warmup_s < 0 or config.reference_s <= 0 or config.timeout_s <= 0:
        raise LeafnetError("duration_s, reference_s and timeout_s must be > 0, warmup_s >= 0")
    if config.max_images < 1:
        raise LeafnetError("max_images must be at least 1")
    if urllib.parse.urlsplit(config.url).scheme not in ("http", "https"):
        raise LeafnetError(f"url must be http(s)://host:port, got {config.url!r}")


def load_images(folder: str, limit: int) -> list[bytes]:
    root = Path(folder)
    if not root.is_dir():
        raise LeafnetError(f"images folder {root} not found: run make prepare, or pass images=<folder>")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise LeafnetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return [p.read_bytes() for p in paths]


class HttpClient:
    """A lean HTTP/1.1 client on one keep-alive socket, reopened after an error.

    Client and server share this machine's cores, so the load generator must cost little, and http.client
    costs a large share of a core per request (docs/serving.md). This one sends prebuilt request bytes and reads the
    response by Content-Length (TorchServe always sends it), as load generators such as wrk do.
    """

    def __init__(self, url: str, path: str, token: str | None, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise LeafnetError(f"the serving benchmark speaks plain http, not {parts.scheme}: {url}")
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._timeout = timeout
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = (
            f"POST {parts.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
            "Content-Type: application/octet-stream\r\nContent-Length: "
        ).encode()
        self._socket: socket.socket | None = None
        self._buffer = b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        if self._socket is None:
            self._socket = socket.create_connection(self._address, timeout=self._timeout)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        try:
            self._socket.sendall(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status, headers, payload = self._read_response()
        except (OSError, ValueError):
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self._buffer:
            self._receive()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:  # "100 Continue": the real response follows
            return self._read_response()
        if "content-length" not in headers:
            raise ValueError(f"response without Content-Length (HTTP {status})")
        length = int(headers["content-length"])
        while len(self._buffer) < length:
            self._receive()
        payload, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, headers, payload

    def _receive(self) -> None:
        chunk = self._socket.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def run_level(config: ServingBenchConfig, images: list[bytes], concurrency: int) -> LevelResult:
    """`concurrency` closed-loop clients for warmup_s + duration_s; only requests started after the warm-up count."""
    return run_clients(config, [ClientGroup(images, concurrency)])[0]


@dataclass
class ClientGroup:
    """Clients sending `images` round robin; the whole run ends once `max_requests` of theirs are counted."""

    images: list[bytes]
    clients: int
    max_requests: int | None = None


def run_clients(config: ServingBenchConfig, groups: list[ClientGroup]) -> list[LevelResult]:
    """Closed-loop clients of every group at once for warmup_s + duration_s (or until a group's max_requests);
    only requests started after the warm-up count. One result per group."""
    measure_from = time.perf_counter() + config.warmup_s
    stop_at = measure_from + config.duration_s
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in groups]
    errors: list[dict[str, int]] = [{} for _ in groups]

    def client(group: int, index: int) -> None:
        images, limit = groups[group].images, groups[group].max_requests
        http_client = HttpClient(config.url, f"/predictions/{config.model}", config.token, config.timeout_s)
        position = index * 7919  # clients start at different images
        try:
            while (started := time.perf_counter()) < stop_at and not stop.is_set():
                body = images[position % len(images)]
                position += 1
                try:
                    status, _ = http_client.post(body)
                    kind = None if status == 200 else f"HTTP {status}"
                except (OSError, ValueError) as error:
                    kind = type(error).__name__
                if started < measure_from or stop.is_set():
                    continue
                with lock:
                    if kind is None:
                        latencies[group].append((time.perf_counter() - started) * 1000)
                    else:
                        errors[group][kind] = errors[group].get(kind, 0) + 1
                    if limit and len(latencies[group]) + sum(errors[group].values()) >= limit:
                        stop.set()
        finally:
            http_client.close()

    threads = [
        threading.Thread(target=client, args=(g, i), daemon=True)
        for g, group in enumerate(groups)
        for i in range(group.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = max(time.perf_counter() - measure_from, 1e-9)
    return [
        LevelResult(group.clients, len(latencies[g]), sum(errors[g].values()), errors[g], seconds, latencies[g])
        for g, group in enumerate(groups)
    ]


def check_server(config: ServingBenchConfig, image: bytes, version: str) -> None:
    """Fails early, with the fix, when nothing answers or the server runs another model version."""
    client = HttpClient(config.url, f"/predictions/{config.model}", config.token, config.timeout_s)
    try:
        status, body = client.post(image)
    except (OSError, ValueError) as error:
        raise LeafnetError(
            f"no TorchServe answers at {config.url} ({error}): start one with leafnet serve start variant=onnx-int8"
        ) from None
    finally:
        client.close()
    if status != 200:
        raise LeafnetError(f"{config.url}/predictions/{config.model} answered HTTP {status}: {body[:200]!r}")
    served = json.loads(body).get("model_version")
    if served != version:
        raise LeafnetError(f"the server runs model version {served}, but {config.archive} holds {version}")


def run_serving_benchmark(config: ServingBenchConfig, log=logger.info) -> dict:
    _validate(config)
    report = _cost_report(config, log) if config.worst_case == "cost" else _load_report(config, log)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "serving_benchmark.json", report)
    atomic_write_bytes(out / "serving_benchmark.md", render_markdown(report).encode())
    return report


def _load_report(config: ServingBenchConfig, log) -> dict:
    """The levels against the server, and with worst_case=load the worst-case level after them."""
    images = load_images(config.images, config.max_images)
    archive = Path(config.archive)
    worst_case = None
    with tempfile.TemporaryDirectory(prefix="leafnet-bench-") as workdir:
        unpack_archive(archive, Path(workdir))
        handler = ArchivedHandler(Path(workdir), whole_machine=True)
        check_server(config, images[0], handler.version)
        log(
            f"in-process references of {archive.name} ({len(images)} images): one process, and "
            f"{handler.workers} process(es) sized like the server's workers, before and after each level"
        )
        with ParallelReference(Path(workdir), images, handler.workers) as parallel:

            def references(level: int) -> dict:
                single = reference_throughput(handler, images, level, config.reference_s)
                return {"single": single, "parallel": parallel.measure(level, config.reference_s)}

            single_image = None
            if 1 not in config.concurrency:  # the one-image median is the latency baseline
                single_image = reference_throughput(handler, images, 1, config.reference_s)
            levels = []
            for level in config.concurrency:
                before = references(level)
                result = run_level(config, images, level).summary()
                after = references(level)
                result["in_process"] = {kind: bracketed(before[kind], after[kind]) for kind in before}
                if level == 1:
                    single_image = result["in_process"]["single"]
                levels.append(_with_ratios(result))
                log(_level_line(result))
        if config.worst_case == "load":
            worst_case, worst = _worst_case_costs(handler.handler.preprocessor, "leafnet_serving", workdir, log)
            worst_case["level"] = run_worst_case_level(config, images, worst)
            log(_worst_level_line(worst_case["level"]))
    return {
        "config": {k: v for k, v in vars(config).items() if k != "token"},
        "archive_sha256": sha256_file(archive),
        "model_version": handler.version,
        "archive_batch_size": handler.batch_size,
        "archive_workers": handler.workers,
        "single_image_ms": single_image["median_call_ms"],
        "levels": levels,
        "single_request_overhead_ms": _single_overhead(levels, single_image),
        "worst_case": worst_case,
        "host": _host(),
    }


def _cost_report(config: ServingBenchConfig, log) -> dict:
    """worst_case=cost: the in-process cost of the most expensive accepted images, no server involved: with
    the archive's own handler code and settings, or with preprocess= and the packaged handler options."""
    report = {"config": {k: v for k, v in vars(config).items() if k != "token"}}
    if config.preprocess:
        spec = json.loads(Path(config.preprocess).read_text())
        options = (yaml.safe_load(packaged.MODEL_CONFIG.read_text()) or {}).get("handler") or {}
        timeout_s = options.get("prepare_timeout_s", DEFAULT_PREPARE_TIMEOUT_S)  # as the handler reads them
        preprocessor = Preprocessor(spec, options.get("max_image_pixels"), timeout_s)
        report["worst_case"] = _worst_case_costs(preprocessor, "leafnet.serving", None, log)[0]
    else:
        archive = Path(config.archive)
        with tempfile.TemporaryDirectory(prefix="leafnet-bench-") as workdir:
            unpack_archive(archive, Path(workdir))
            handler = ArchivedHandler(Path(workdir))
            report["worst_case"] = _worst_case_costs(handler.handler.preprocessor, "leafnet_serving", workdir, log)[0]
        report |= {"archive_sha256": sha256_file(archive), "model_version": handler.version}
    return {**report, "host": _host()}


def _worst_case_costs(preprocessor, package: str, path, log) -> tuple[dict, list[bytes]]:
    """The most expensive images `preprocessor` accepts (at its pixel cap) and what each costs, in-process,
    measured with `package` from `path` (the archive's own code); and the accepted ones' bytes."""
    cap, timeout_s = preprocessor.max_pixels, getattr(preprocessor, "timeout_s", None)
    log(f"worst case: the most expensive images at max_pixels={cap}, each prepared in a fresh process")
    images = worst_case_images(cap)
    costs = measure_costs(images, preprocessor.spec, cap, timeout_s, package, path)
    for name, cost in costs.items():
        log(
            f"  {name:>18}: {cost['bytes'] / 2**20:5.1f} MiB, {cost['peak_mb_above_idle']:6.1f} MB above idle, "
            f"{cost['wall_s']:.3f} s ({cost['cpu_s']:.3f} s CPU), {cost['outcome']}"
        )
    accepted = [images[name] for name, cost in costs.items() if cost["outcome"] == "accepted"]
    return {"max_pixels": cap, "timeout_s": timeout_s, "images": costs}, accepted


def run_worst_case_level(config: ServingBenchConfig, images: list[bytes], worst: list[bytes]) -> dict:
    """`worst_case_good_clients` clients of ordinary images alone, then the same beside `worst_case_clients`
    clients of the most expensive accepted images (until worst_case_max_requests of theirs): the ordinary
    requests' latency against their own a moment before, and the server's memory when server_pid is set."""
    if not worst:
        raise LeafnetError("the worst-case level has no accepted worst-case image to send")
    good = ClientGroup(images, config.worst_case_good_clients)
    normal = run_clients(config, [good])[0].summary()
    memory = TreeMemory(config.server_pid) if config.server_pid else None
    with memory or nullcontext():
        beside, bad = run_clients(
            config, [good, ClientGroup(worst, config.worst_case_clients, config.worst_case_max_requests)]
        )
    beside, bad = beside.summary(), bad.summary()
    return {
        "good_clients": config.worst_case_good_clients,
        "worst_clients": config.worst_case_clients,
        "normal": normal,
        "beside_worst": beside,
        "worst": bad,
        "p50_ratio": round(beside["p50_ms"] / normal["p50_ms"], 2),
        "p99_ratio": round(beside["p99_ms"] / normal["p99_ms"], 2),
        "server_mb": {"before": round(memory.idle_mb, 1), "peak": round(memory.peak_mb, 1)} if memory else None,
    }


def _worst_level_line(level: dict) -> str:
    normal, beside, worst, memory = level["normal"], level["beside_worst"], level["worst"], level["server_mb"]
    memory_text = f", server memory {memory['before']:.0f} -> peak {memory['peak']:.0f} MB" if memory else ""
    return (
        f"  worst case: {level['good_clients']} ordinary clients p99 {normal['p99_ms']:.2f} ms alone, "
        f"{beside['p99_ms']:.2f} ms beside {level['worst_clients']} worst-case clients ({level['p99_ratio']:.1f}x); "
        f"worst-case requests {worst['requests']} answered (p50 {worst['p50_ms']:.0f} ms), "
        f"errors {worst['error_kinds'] or 0}{memory_text}"
    )


def _host() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


DRIFT_WARNING = 0.10  # a reference that moved more than this between before and after is flagged


def _with_ratios(result: dict) -> dict:
    single, parallel = result["in_process"]["single"], result["in_process"]["parallel"]
    result["ratio_to_in_process"] = round(result["requests_per_s"] / single["images_per_s"], 3)
    result["ratio_to_parallel_in_process"] = round(result["requests_per_s"] / parallel["images_per_s"], 3)
    result["reference_drift"] = round(
        max(abs(r["images_per_s_after"] / r["images_per_s_before"] - 1) for r in (single, parallel)), 3
    )
    return result


def _level_line(result: dict) -> str:
    single, parallel = result["in_process"]["single"], result["in_process"]["parallel"]
    drift = f"  (references moved {result['reference_drift']:.0%})" if result["reference_drift"] > DRIFT_WARNING else ""
    return (
        f"  concurrency {result['concurrency']:>3}: {result['requests_per_s']:8.1f} req/s  "
        f"p50 {result['p50_ms']:7.2f} ms  p90 {result['p90_ms']:7.2f}  p99 {result['p99_ms']:7.2f}  "
        f"errors {result['errors']}  ratio {result['ratio_to_in_process']:.2f} of one process "
        f"({single['images_per_s']:.0f} img/s), {result['ratio_to_parallel_in_process']:.2f} of "
        f"{parallel['processes']} ({parallel['images_per_s']:.0f} img/s){drift}"
    )


def _single_overhead(levels: list[dict], single: dict) -> float | None:
    """Served median latency at concurrency 1 minus the in-process median of one image (decode included)."""
    one = next((level for level in levels if level["concurrency"] == 1), None)
    return round(one["p50_ms"] - single["median_call_ms"], 2) if one else None


def render_markdown(report: dict) -> str:
    config = report["config"]
    served = config.get("worst_case") != "cost"  # worst_case=cost measures in-process only
    lines = [f"# Serving benchmark: {config['model']}" + (f" at {config['url']}" if served else "")]
    if report.get("levels"):
        lines += ["", *_levels_markdown(report)]
    if report.get("worst_case"):
        lines += ["", *_worst_case_markdown(report["worst_case"])]
    return "\n".join(lines) + "\n"


def _levels_markdown(report: dict) -> list[str]:
    config = report["config"]
    lines = [
        f"Archive `{Path(config['archive']).name}` (version {report['model_version']}, "
        f"{report['archive_workers']} worker(s) x batchSize {report['archive_batch_size']}), "
        f"{config['duration_s']} s per level after {config['warmup_s']} s warm-up. Ratios: served requests/s "
        "over the same handler's images/s in-process, `concurrency` images in flight: in one process using "
        "every core, and in as many processes as the archive has workers, each sized like one. Each reference "
        "is the mean of runs right before and right after the level (before / after in brackets).",
        "",
        "| concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | one process img/s | ratio "
        "| parallel img/s | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    flagged = []
    for level in report["levels"]:
        single, parallel = level["in_process"]["single"], level["in_process"]["parallel"]
        lines.append(
            f"| {level['concurrency']} | {level['requests_per_s']:.1f} | {level['p50_ms']:.2f} "
            f"| {level['p90_ms']:.2f} | {level['p99_ms']:.2f} | {level['errors']} | {_reference_cell(single)} "
            f"| {level['ratio_to_in_process']:.2f} | {_reference_cell(parallel)} "
            f"| {level['ratio_to_parallel_in_process']:.2f} |"
        )
        if level["reference_drift"] > DRIFT_WARNING:
            flagged.append(f"{level['concurrency']} ({level['reference_drift']:.0%})")
    lines += ["", f"In-process median for one image (decode included): {report['single_image_ms']:.2f} ms."]
    if report["single_request_overhead_ms"] is not None:
        lines.append(f"Served median at concurrency 1 is {report['single_request_overhead_ms']:+.2f} ms from it.")
    if flagged:
        lines.append(
            f"The machine's speed moved by more than {DRIFT_WARNING:.0%} during the levels at concurrency "
            f"{', '.join(flagged)} (largest change of a reference between before and after): read those ratios "
            "with care, or run again."
        )
    return lines


def _worst_case_markdown(worst_case: dict) -> list[str]:
    lines = [
        f"## Worst case: the most expensive accepted images (max_pixels {worst_case['max_pixels']:,}, "
        f"prepare_timeout_s {worst_case['timeout_s']})",
        "",
        "Each decoded and fitted by the handler's preprocessing in a fresh process: peak RSS above the idle "
        "process, wall and CPU time.",
        "",
        "| image | MiB | MB above idle | wall s | CPU s | outcome |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, cost in worst_case["images"].items():
        lines.append(
            f"| {name} | {cost['bytes'] / 2**20:.1f} | {cost['peak_mb_above_idle']:.1f} | {cost['wall_s']:.3f} "
            f"| {cost['cpu_s']:.3f} | {cost['outcome']} |"
        )
    level = worst_case.get("level")
    if level:
        normal, beside, worst, memory = level["normal"], level["beside_worst"], level["worst"], level["server_mb"]
        lines += [
            "",
            f"{level['good_clients']} clients of ordinary images, alone and then beside {level['worst_clients']} "
            "clients of the images above:",
            "",
            "| requests | count | errors | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            f"| ordinary, alone | {normal['requests']} | {normal['errors']} | {normal['p50_ms']:.2f} "
            f"| {normal['p99_ms']:.2f} |",
            f"| ordinary, beside the worst case | {beside['requests']} | {beside['errors']} "
            f"| {beside['p50_ms']:.2f} | {beside['p99_ms']:.2f} |",
            f"| worst case | {worst['requests']} | {worst['errors']} | {worst['p50_ms']:.2f} | {worst['p99_ms']:.2f} |",
            "",
            f"Ordinary p50 {level['p50_ratio']:.1f}x and p99 {level['p99_ratio']:.1f}x their own alone.",
        ]
        if worst["error_kinds"]:
            lines.append(f"Worst-case errors: {worst['error_kinds']}.")
        if memory:
            lines.append(
                f"Server memory (PSS of all its processes): {memory['before']:.0f} MB before, "
                f"{memory['peak']:.0f} MB at peak."
            )
    return lines


def _reference_cell(reference: dict) -> str:
    return (
        f"{reference['images_per_s']:.0f} ({reference['images_per_s_before']:.0f} / "
        f"{reference['images_per_s_after']:.0f})"
    )
