"""A real TorchServe (Java 17) serving the exported archives with leafnet/profiles/torchserve/config.properties,
on free loopback ports in a temp dir: health, predictions equal to the offline model, bad input, lockdown."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from leafnet.bench.serving import ServingBenchConfig, render_markdown, run_serving_benchmark
from leafnet.data.ood import generate_ood
from leafnet.errors import LeafnetError
from leafnet.export.archive import build_archive
from leafnet.predict import Predictor, encoded
from leafnet.profiles import TORCHSERVE
from leafnet.serving.supervisor import profile_files_anchored
from tests.conftest import REPO, SERVER_READY_TIMEOUT_S, free_port, offline_top1, png_claiming, unpack
from tests.test_predict import COMMAND as PREDICT
from tests.test_predict import assert_same_answers

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODELS = {"leafnet": "leafnet.mar", "leafnet-onnx-int8": "leafnet-onnx-int8.mar"}
BATCH = 8
BATCH_DELAY_MS = 25_000  # under request()'s 30 s timeout, so a batch that never fills fails rather than hangs
MODEL_CONFIG = yaml.safe_load((REPO / "leafnet" / "serving" / "model-config.yaml").read_text())


def free_grpc_ports(properties: str) -> str:
    """Two servers in one test run must not share TorchServe's gRPC ports (7070, 7071)."""
    return re.sub(r"(?m)^(grpc_\w+_port)=\d+$", lambda m: f"{m.group(1)}={free_port()}", properties)


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, body) of one HTTP request, 4xx/5xx included."""
    # urllib would label a body form-urlencoded, which TorchServe parses as form fields
    headers = {"Content-Type": "application/octet-stream", **(headers or {})} if data is not None else headers or {}
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError):
        return None, b""


def workers(management: str, model: str, headers: dict | None = None) -> list[dict]:
    status, body = request(f"{management}/models/{model}", headers=headers)
    return json.loads(body)[0]["workers"] if status == 200 else []


def ready_workers(management: str, model: str, headers: dict | None = None) -> list[dict]:
    return [w for w in workers(management, model, headers) if w["status"] == "READY"]


def all_ready(management: str, model: str, headers: dict | None = None) -> bool:
    listed = workers(management, model, headers)
    return bool(listed) and all(w["status"] == "READY" for w in listed)


def frontend_alive(base: Path) -> bool:
    """Whether the TorchServe frontend started in `base` still runs (its pid file is in TMPDIR=base)."""
    try:
        os.kill(int((base / ".model_server.pid").read_text()), 0)
    except (FileNotFoundError, ValueError):
        return True  # the launcher has not written it yet
    except ProcessLookupError:
        return False
    return True


def wait_until_ready(management: str, models: list[str], base: Path) -> None:
    """Polls until every worker of every model is READY: TorchServe offers no blocking start. A frontend
    that died (a port taken, a bad config) fails at once with its log instead of after the timeout."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(all_ready(management, name) for name in models):
            return
        if not frontend_alive(base):
            break
        time.sleep(0.5)
    logs = [base / "logs" / "ts_log.log", base / "launcher.log", base / "logs" / "model_log.log"]
    tail = "\n".join(f"{p.name}:\n{p.read_text()[-2000:]}" for p in logs if p.is_file()) or "no log"
    state = "exited" if not frontend_alive(base) else f"was not ready after {SERVER_READY_TIMEOUT_S} s"
    raise AssertionError(f"TorchServe {state}:\n{tail}")


def loopback_properties(profile: str, model_store: str, models: dict[str, str], anchored: bool = True):
    """A profile from leafnet/profiles/torchserve on free loopback ports, serving `models` from `model_store`:
    tests never bind 0.0.0.0. Returns the properties text, the three HTTP URLs (TorchServe's own, which
    the proxy sits in front of) and the environment it needs (none since the proxy owns $PORT).
    anchored: the files the profile names (metrics.yaml, log4j2.xml) by absolute path, as the supervisor
    hands them to TorchServe, so the copy runs from anywhere; otherwise relative, as the profile has them."""
    source = TORCHSERVE / profile
    properties = source.read_text().replace("0.0.0.0", "127.0.0.1")
    urls = {}
    for name, default in (("inference", 8085), ("management", 8081), ("metrics", 8082)):
        port = free_port()
        properties = properties.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        urls[name] = f"http://127.0.0.1:{port}"
    properties = free_grpc_ports(properties)
    # Workers talk to the frontend over /tmp/.ts.sock.<port> whatever TMPDIR says, from 9000 up: two servers
    # at once must number their workers apart.
    properties += f"\ninitial_worker_port={free_port()}\n"
    if anchored:
        properties = profile_files_anchored(properties, source)
    load = ",".join(f"{name}={archive}" for name, archive in models.items())
    properties = re.sub(r"(?m)^load_models=.*$", f"load_models={load}", properties)
    properties = re.sub(r"(?m)^model_store=.*$", f"model_store={model_store}", properties)
    return properties, urls, {}


@contextlib.contextmanager
def torchserve(base: Path, properties: str, urls: dict[str, str], models: list[str], **env: str):
    """A TorchServe started in `base` (its working directory, pid file and logs), stopped on exit."""
    (base / "config.properties").write_text(properties)
    # TMPDIR isolates TorchServe's pid file (it lives in the temp dir) from any other server.
    logs = str(base / "logs")
    env = {**os.environ, "TMPDIR": str(base), "LOG_LOCATION": logs, "METRICS_LOCATION": logs, **env}
    command = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
    start = [command, "--start", "--ncs", "--ts-config", str(base / "config.properties")]
    with open(base / "launcher.log", "w") as launcher:  # the JVM inherits these: a pipe would never close
        subprocess.run(start, env=env, cwd=base, stdout=launcher, stderr=subprocess.STDOUT, check=True, timeout=60)
    try:
        wait_until_ready(urls["management"], models, base)
        yield urls
    finally:
        subprocess.run([command, "--stop"], env=env, cwd=base, capture_output=True, timeout=60)


def rebatched_archive(config, base: Path, name: str, batch: int, delay_ms: int) -> str:
    """The int8 archive again as `name`, with one worker, batchSize `batch` and maxBatchDelay `delay_ms`."""
    return rebuilt_archive(config, base, name, {"batchSize": batch, "maxBatchDelay": delay_ms})


def rebuilt_archive(config, base: Path, name: str, settings: dict, handler: dict | None = None) -> str:
    """The int8 archive again as `name`, with one worker, model-config.yaml's `settings` and `handler` options."""
    model_dir, manifest = unpack(Path(config.model_store) / "leafnet-onnx-int8.mar", base / "unpacked")
    model_config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    model_config.update(minWorkers=1, maxWorkers=1, **settings)
    model_config["handler"] = {**model_config["handler"], **(handler or {})}
    (base / "model-config.yaml").write_text(yaml.safe_dump(model_config))
    kept = ("index_to_name.json", "preprocess.json", "calibration.json", "drift_reference.json")
    extras = [model_dir / kept_name for kept_name in kept]
    (base / "package").mkdir()
    shutil.copytree(model_dir / "leafnet_serving", base / "package" / "leafnet_serving")
    extras.append(base / "package")  # a folder: the archiver copies its entries into the archive's root
    build_archive(
        name, manifest["model"]["modelVersion"], model_dir / manifest["model"]["serializedFile"],
        model_dir / "leafnet_handler.py", extras, base / "model-config.yaml", Path(config.model_store),
    )  # fmt: skip
    return f"{name}.mar"


@pytest.fixture(scope="module")
def batch_archive(exported, tmp_path_factory) -> str:
    """The int8 archive again with one worker and a maxBatchDelay far beyond how long eight requests take
    to arrive: the frontend dispatches a batch when it is full or when the delay has passed, so eight
    concurrent requests are one batch however slow the machine is."""
    _, config = exported
    return rebatched_archive(config, tmp_path_factory.mktemp("batch_archive"), "leafnet-batch", BATCH, BATCH_DELAY_MS)


@pytest.fixture(scope="module")
def refusing_archive(exported, tmp_path_factory) -> str:
    """The int8 archive again with unknown_policy: refuse."""
    _, config = exported
    base = tmp_path_factory.mktemp("refusing_archive")
    return rebuilt_archive(config, base, "leafnet-refuse", {}, {"unknown_policy": "refuse"})


@pytest.fixture(scope="module")
def server(exported, batch_archive, refusing_archive, tmp_path_factory):
    _, config = exported
    base = tmp_path_factory.mktemp("torchserve")
    models = {**MODELS, "leafnet-batch": batch_archive, "leafnet-refuse": refusing_archive}
    properties, urls, _ = loopback_properties("config.properties", config.model_store, models)
    with torchserve(base, properties, urls, list(models)):
        yield urls


def test_ping_is_healthy(server):
    status, body = request(f"{server['inference']}/ping")
    assert status == 200 and json.loads(body)["status"] == "Healthy"


def served_top1(inference: str, model: str, images: list[Path], version: str) -> list[int]:
    """The served top-1 class of each image, checking every answer is a 200 from model `version`."""
    served = []
    for image in images:
        status, body = request(f"{inference}/predictions/{model}", data=image.read_bytes())
        assert status == 200, body
        answer = json.loads(body)
        assert answer["model_version"] == version
        served.append(answer["predictions"][0]["index"])
    return served


def test_every_served_model_predicts_like_the_offline_model(server, exported, tiny_leaves):
    report, config = exported
    images = sorted((tiny_leaves / "test").rglob("*.png"))[::2]
    expected = offline_top1(config.checkpoint, images)
    for model in MODELS:
        assert served_top1(server["inference"], model, images, report["version"]) == expected, model


def test_unknown_is_true_for_generated_non_leaves_and_false_for_test_leaves(server, exported, tiny_leaves):
    """Through a real TorchServe, each archive's answers: test leaves known (as many as export measured for its
    variant), generated pictures that are not leaves (noise, scenes, glyphs, geometric figures, textures)
    unknown, each answer as `leafnet predict` gives it offline, with the calibrated confidence beside it. (This
    4-class model learnt from 24 images of 32 px; the demo model's figures are in docs/calibration.md.)"""
    report, config = exported
    leaves = sorted((tiny_leaves / "test").rglob("*.png"))
    non_leaves = generate_ood(2, seed=11, families=("geometric", "glyphs", "textures", "noise", "scenes"))
    for model, archive in MODELS.items():
        measured = report["variants"][report["archives"][archive]["variant"]]["ood"]
        answers = []
        for body in [p.read_bytes() for p in leaves] + [encoded(item.image) for item in non_leaves]:
            status, text = request(f"{server['inference']}/predictions/{model}", data=body)
            assert status == 200, text
            answers.append(json.loads(text))
        assert all(a["confidence"] == a["predictions"][0]["probability"] for a in answers)
        known = [not a["unknown"] for a in answers[: len(leaves)]]
        assert sum(known) == round(measured["test_accepted"] * len(leaves)) >= len(leaves) - 1, model
        flagged = {item.family: [] for item in non_leaves}
        for item, answer in zip(non_leaves, answers[len(leaves) :], strict=True):
            flagged[item.family].append(answer["unknown"])
        assert flagged["noise"] == flagged["scenes"] == flagged["textures"] == [True, True], (model, flagged)
        assert sum(map(sum, flagged.values())) >= 0.8 * len(non_leaves), (model, flagged)
        offline = Predictor.load(Path(config.model_store) / archive).predict([*leaves, *(i.image for i in non_leaves)])
        assert [a["unknown"] for a in offline] == [a["unknown"] for a in answers], model


def test_unknown_policy_refuse_answers_422_with_a_json_reason(server, tiny_leaves):
    url = f"{server['inference']}/predictions/leafnet-refuse"
    status, text = request(url, data=sorted((tiny_leaves / "train").rglob("*.png"))[0].read_bytes())
    assert status == 200 and json.loads(text)["unknown"] is False, text
    scene = generate_ood(1, seed=5, families=("scenes",))[0].image
    status, text = request(url, data=encoded(scene))
    refusal = json.loads(text)
    assert status == 422 == refusal["code"] and refusal["unknown"] is True, text
    assert refusal["error"].startswith("unknown: the image does not look like what the model was trained on")


def curl(*args: str) -> dict:
    return json.loads(subprocess.run(["curl", "-s", "-X", "POST", *args], capture_output=True, check=True).stdout)


def test_leafnet_predict_answers_as_the_server(server, exported, tiny_leaves, tmp_path, run_script):
    """`leafnet predict` on each served archive, offline: the server's answers for the same files."""
    _, config = exported
    images = sorted((tiny_leaves / "test").rglob("*.png"))
    for model, archive in MODELS.items():
        served = []
        for image in images:
            status, body = request(f"{server['inference']}/predictions/{model}", data=image.read_bytes())
            assert status == 200, body
            served.append(json.loads(body))
        output = tmp_path / f"{model}.jsonl"
        done = run_script(
            PREDICT, "predict", str(Path(config.model_store) / archive), *map(str, images), "--output", str(output)
        )
        assert done.returncode == 0, done.stderr
        offline = [json.loads(line) for line in output.read_text().splitlines()]
        assert [record["path"] for record in offline] == [str(image) for image in images]
        assert_same_answers(offline, served)


def test_every_accepted_input_form_gives_the_same_answer(server, tiny_leaves):
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    url = f"{server['inference']}/predictions/leafnet"
    encoded = base64.b64encode(image.read_bytes()).decode()
    answers = [
        curl(url, "-T", str(image)),
        curl(url, "-F", f"data=@{image}"),
        curl(url, "-F", f"leaf=@{image}"),  # another field name
        curl(url, "--data-binary", f"@{image}", "-H", "Content-Type: application/octet-stream"),
        curl(url, "-H", "Content-Type: application/json", "-d", json.dumps({"image": encoded})),
        curl(url, "-H", "Content-Type: text/plain", "-d", f"data:image/png;base64,{encoded}"),
    ]
    assert all(answer == answers[0] for answer in answers), answers
    assert len(answers[0]["predictions"]) == 4  # top-5 capped at the 4 classes


def test_every_bad_input_gets_a_4xx_with_a_reason_and_the_worker_survives(server, tiny_leaves, tmp_path):
    url = f"{server['inference']}/predictions/leafnet-onnx-int8"
    pids = sorted(w["pid"] for w in ready_workers(server["management"], "leafnet-onnx-int8"))
    assert len(pids) == MODEL_CONFIG["minWorkers"]
    png = sorted((tiny_leaves / "test").rglob("*.png"))[0].read_bytes()
    octets = {"Content-Type": "application/octet-stream"}
    cases = [
        (b"", octets, 400, "empty body"),
        (b"certainly not a PNG", octets, 400, "not an image"),
        (png[: len(png) // 2], octets, 400, "truncated"),
        (png_claiming(7_000, 7_000), octets, 413, "exceeds max_pixels"),
        # A form body reaches the handler only when Netty can parse it as a form: no bad %-escape, else
        # TorchServe answers 500 ErrorDataDecoderException itself (docs/serving.md).
        (png.replace(b"%", b""), {"Content-Type": "application/x-www-form-urlencoded"}, 415, "octet-stream"),
        (b'{"picture": 1}', {"Content-Type": "application/json"}, 400, '"image" field'),
        (b"%%% not base64", {"Content-Type": "text/plain"}, 400, "not valid base64"),
    ]
    for body, headers, expected, reason in cases:
        status, answer = request(url, data=body, headers=headers)
        assert status == expected and reason in json.loads(answer)["error"], (reason, status, answer)
    # TorchServe itself refuses a body over max_request_size (10 MB), before any handler, without a body.
    # curl waits for "100 Continue" and reads the 413; urllib would still be sending when the server hangs up.
    (tmp_path / "huge.png").write_bytes(png + bytes(10 * 1024 * 1024))
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", url, "-T", str(tmp_path / "huge.png")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert status == "413"
    assert request(url, data=png)[0] == 200
    assert sorted(w["pid"] for w in ready_workers(server["management"], "leafnet-onnx-int8")) == pids


def test_a_batch_with_one_bad_item_answers_each_request_on_its_own(server, exported, tiny_leaves):
    """leafnet-batch waits up to 25 s to fill a batch of 8: eight concurrent requests are one batch."""
    _, config = exported
    images = sorted((tiny_leaves / "test").rglob("*.png"))[: BATCH - 1]
    bodies = [p.read_bytes() for p in images]
    bodies.insert(3, b"not an image at all")
    url = f"{server['inference']}/predictions/leafnet-batch"
    together = threading.Barrier(BATCH)  # all eight threads exist before the first request leaves

    def send(body: bytes):
        together.wait(timeout=30)
        return request(url, data=body)

    started = time.monotonic()
    with ThreadPoolExecutor(BATCH) as pool:
        results = list(pool.map(send, bodies))
    assert time.monotonic() - started < BATCH_DELAY_MS / 1000, "the batch filled only when its delay ran out"
    bad_status, bad_body = results.pop(3)
    assert bad_status == 400 and "not an image" in json.loads(bad_body)["error"]
    assert [status for status, _ in results] == [200] * (BATCH - 1)
    served = [json.loads(body)["predictions"][0]["index"] for _, body in results]
    assert served == offline_top1(config.checkpoint, images)
    batches = metric_values(server["metrics"], "leafnet_batch_size", 'ModelName="leafnet-batch"', ("count", "sum"))
    assert batches == {"count": 1.0, "sum": BATCH - 1.0}  # one forward pass for the seven good images


def test_concurrent_requests_each_get_their_own_answer(server, exported, tiny_leaves):
    _, config = exported
    images = sorted((tiny_leaves / "test").rglob("*.png")) * 4
    url = f"{server['inference']}/predictions/leafnet-onnx-int8"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda image: request(url, data=image.read_bytes()), images))
    assert [status for status, _ in results] == [200] * len(images)
    served = [json.loads(body)["predictions"][0]["index"] for _, body in results]
    assert served == offline_top1(config.checkpoint, images)


def test_model_api_refuses_remote_registration(server):
    status, _ = request(f"{server['management']}/models?url=https://example.com/evil.mar", data=b"", method="POST")
    assert status == 405


def metric_values(metrics_url: str, name: str, labels: str, suffixes: tuple[str, ...]) -> dict[str, float]:
    """Values of `name`_<suffix>{...labels...} on the Prometheus endpoint, polled until all appear: the
    frontend reads metrics from the worker's log asynchronously."""
    deadline = time.monotonic() + 30
    while True:
        _, body = request(f"{metrics_url}/metrics")
        found = {}
        for line in body.decode().splitlines():
            for suffix in suffixes:
                if line.startswith(f"{name}_{suffix}{{") and labels in line:
                    found[suffix] = float(line.rsplit(" ", 1)[1])
        if len(found) == len(suffixes) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_prometheus_endpoint_shows_the_handler_metrics(server, tiny_leaves):
    url = f"{server['inference']}/predictions/leafnet"
    assert request(url, data=sorted((tiny_leaves / "test").rglob("*.png"))[0].read_bytes())[0] == 200
    assert request(url, data=b"")[0] == 400
    model = 'ModelName="leafnet"'
    assert metric_values(server["metrics"], "leafnet_inference_seconds", model, ("count", "sum"))["count"] >= 1
    assert metric_values(server["metrics"], "leafnet_top1_probability", model, ("count",))["count"] >= 1
    assert metric_values(server["metrics"], "leafnet_rejected", f'{model},Level="Model",Reason="empty"', ("total",))
    _, body = request(f"{server['metrics']}/metrics")
    assert b"ts_inference_requests_total" in body and b"# TYPE leafnet_batch_size histogram" in body


def test_killed_workers_are_restarted_and_serve_again(server, tiny_leaves):
    management, model = server["management"], "leafnet-onnx-int8"
    killed = {w["pid"] for w in ready_workers(management, model)}
    assert len(killed) == MODEL_CONFIG["minWorkers"], "not every worker was READY"
    for pid in killed:  # all of them: the answer below must come from a restarted worker
        os.kill(pid, signal.SIGKILL)

    def restored() -> bool:  # as many READY workers as before, none of them a killed one
        pids = {w["pid"] for w in ready_workers(management, model)}
        return all_ready(management, model) and len(pids) == len(killed) and not pids & killed

    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while not restored():
        assert time.monotonic() < deadline, "TorchServe did not restart the killed workers"
        time.sleep(0.5)
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    assert request(f"{server['inference']}/predictions/{model}", data=image.read_bytes())[0] == 200


def test_serve_and_predict_scripts(server, exported, tiny_leaves, tmp_path):
    """scripts/serve.sh start|status|stop and scripts/predict.sh, on their own server beside the fixture's."""
    _, config = exported
    properties, urls, _ = loopback_properties("config.properties", config.model_store, {"leafnet": "leafnet.mar"})
    (tmp_path / "config.properties").write_text(properties)
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PORT": proxy.rsplit(":", 1)[1],
        "TMPDIR": str(tmp_path),
        "TS_CONFIG": str(tmp_path / "config.properties"),
        "MODEL_STORE": config.model_store,
        "LOG_LOCATION": str(tmp_path / "logs"),
    }
    serve = [str(REPO / "scripts" / "serve.sh")]
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    try:
        started = subprocess.run([*serve, "start", "onnx-int8"], env=env, capture_output=True, text=True, timeout=200)
        assert started.returncode == 0, started.stderr
        assert f"leafnet-onnx-int8.mar behind the proxy: curl -X POST {proxy}/predictions/leafnet" in started.stdout
        # start returns once every worker has loaded the model, not merely once /ping says Healthy
        assert all_ready(urls["management"], "leafnet")
        assert len(ready_workers(urls["management"], "leafnet")) == MODEL_CONFIG["minWorkers"]
        status = subprocess.run([*serve, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and "Healthy" in status.stdout
        predicted = subprocess.run(
            [str(REPO / "scripts" / "predict.sh"), str(image)], env=env, capture_output=True, text=True
        )
        assert predicted.returncode == 0, predicted.stderr
        assert json.loads(predicted.stdout)["predictions"][0]["label"] == image.parent.name
        again = subprocess.run([*serve, "start", "onnx-int8"], env=env, capture_output=True, text=True)
        assert again.returncode == 2 and "already serving" in again.stderr
    finally:
        stopped = subprocess.run([*serve, "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert request(f"{proxy}/ping")[0] is None and request(f"{urls['inference']}/ping")[0] is None  # both gone
    missing = subprocess.run([*serve, "start", "onnx-dynq"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "leafnet-onnx-dynq.mar not found" in missing.stderr
    unknown = subprocess.run([*serve, "start", "onnx-fp16"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown variant 'onnx-fp16'; choose from torchscript," in unknown.stderr
    assert subprocess.run([*serve, "status"], env=env, capture_output=True).returncode == 1


def test_serving_benchmark_measures_load_and_the_in_process_reference(server, exported, tiny_leaves, tmp_path):
    _, config = exported
    bench = ServingBenchConfig(
        url=server["inference"],
        model="leafnet-onnx-int8",
        archive=str(Path(config.model_store) / "leafnet-onnx-int8.mar"),
        images=str(tiny_leaves / "test"),
        concurrency=[1, 4],
        duration_s=1.0,
        warmup_s=0.2,
        reference_s=0.3,
        output=str(tmp_path / "bench"),
    )
    report = run_serving_benchmark(bench, log=lambda _: None)
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    for level in report["levels"]:
        assert level["requests"] > 0 and level["errors"] == 0
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        single, parallel = level["in_process"]["single"], level["in_process"]["parallel"]
        for reference in (single, parallel):  # timed right before and right after the level; the mean counts
            both = (reference["images_per_s_before"], reference["images_per_s_after"])
            assert min(both) > 0 and reference["images_per_s"] == pytest.approx(sum(both) / 2, abs=0.01)
        assert single["batch"] == level["concurrency"]  # every image in flight, fused into one call
        # as many processes as the archive has workers (at most one per request), sharing the images
        assert parallel["processes"] == min(MODEL_CONFIG["maxWorkers"], level["concurrency"])
        assert parallel["processes"] * parallel["batch"] >= level["concurrency"]
        assert level["ratio_to_in_process"] == pytest.approx(level["requests_per_s"] / single["images_per_s"], abs=1e-3)
        ratio = level["requests_per_s"] / parallel["images_per_s"]
        assert level["ratio_to_parallel_in_process"] == pytest.approx(ratio, abs=1e-3)
    assert report["archive_workers"] == MODEL_CONFIG["maxWorkers"]
    one_image = report["levels"][0]["in_process"]["single"]["median_call_ms"]
    assert report["single_image_ms"] == one_image
    assert report["single_request_overhead_ms"] == pytest.approx(report["levels"][0]["p50_ms"] - one_image, abs=0.02)
    assert json.loads((tmp_path / "bench" / "serving_benchmark.json").read_text()) == report
    markdown = (tmp_path / "bench" / "serving_benchmark.md").read_text()
    assert "| 4 |" in markdown
    assert ("moved by more than" in markdown) == any(level["reference_drift"] > 0.1 for level in report["levels"])
    steady, drifted = copy.deepcopy(report), copy.deepcopy(report)
    for level in steady["levels"] + drifted["levels"]:
        level["reference_drift"] = 0.05
    drifted["levels"][1]["reference_drift"] = 0.25  # the machine's speed moved by a quarter during level 4
    assert "moved by more than" not in render_markdown(steady)
    assert "moved by more than 10% during the levels at concurrency 4 (25%) (" in render_markdown(drifted)


def test_serving_benchmark_names_what_is_missing(exported, tiny_leaves, tmp_path):
    _, config = exported
    archive = str(Path(config.model_store) / "leafnet-onnx-int8.mar")
    nobody = ServingBenchConfig(url=f"http://127.0.0.1:{free_port()}", archive=archive, images=str(tiny_leaves))
    with pytest.raises(LeafnetError, match=r"no TorchServe answers at .*leafnet serve start"):
        run_serving_benchmark(nobody, log=lambda _: None)
    with pytest.raises(LeafnetError, match=r"archive .*nothing\.mar not found"):
        run_serving_benchmark(replace(nobody, archive=str(tmp_path / "nothing.mar")), log=lambda _: None)
    with pytest.raises(LeafnetError, match="concurrency must list"):
        run_serving_benchmark(replace(nobody, concurrency=[0]), log=lambda _: None)
