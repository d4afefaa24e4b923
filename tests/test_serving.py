"""A real TorchServe (Java 17) serving the exported archives with config/torchserve/config.properties,
on free loopback ports in a temp dir: health, predictions equal to the offline model, bad input, lockdown."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, offline_top1

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODELS = {"leafnet": "leafnet.mar", "leafnet-onnx-int8": "leafnet-onnx-int8.mar"}
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def wait_until_ready(management: str, models: list[str], server_log: Path) -> None:
    """Polls until every model has a READY worker: TorchServe offers no blocking start."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready = []
        for name in models:
            status, body = request(f"{management}/models/{name}")
            workers = json.loads(body)[0]["workers"] if status == 200 else []
            ready.append(any(w["status"] == "READY" for w in workers))
        if all(ready):
            return
        time.sleep(0.5)
    log = server_log.read_text()[-3000:] if server_log.is_file() else "no log"
    raise AssertionError(f"TorchServe did not get ready in {READY_TIMEOUT_S} s:\n{log}")


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    _, config = exported
    base = tmp_path_factory.mktemp("torchserve")
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    properties = (REPO / "config" / "torchserve" / "config.properties").read_text()
    for name, default in (("inference", 8080), ("management", 8081), ("metrics", 8082)):
        properties = properties.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
    properties = free_grpc_ports(properties)
    load = ",".join(f"{name}={archive}" for name, archive in MODELS.items())
    properties = re.sub(r"(?m)^load_models=.*$", f"load_models={load}", properties)
    properties = re.sub(r"(?m)^model_store=.*$", f"model_store={config.model_store}", properties)
    (base / "config.properties").write_text(properties)
    # TMPDIR isolates TorchServe's pid file (it lives in the temp dir) from any other server.
    env = {
        **os.environ,
        "TMPDIR": str(base),
        "LOG_LOCATION": str(base / "logs"),
        "METRICS_LOCATION": str(base / "logs"),
    }
    torchserve = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
    start = [torchserve, "--start", "--ncs", "--ts-config", str(base / "config.properties")]
    with open(base / "launcher.log", "w") as launcher:  # the JVM inherits these: a pipe would never close
        subprocess.run([*start, "--model-store", config.model_store], env=env, cwd=base, stdout=launcher,
                       stderr=subprocess.STDOUT, check=True, timeout=60)  # fmt: skip
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        wait_until_ready(urls["management"], list(MODELS), base / "logs" / "model_log.log")
        yield urls
    finally:
        subprocess.run([torchserve, "--stop"], env=env, cwd=base, capture_output=True, timeout=60)


def test_ping_is_healthy(server):
    status, body = request(f"{server['inference']}/ping")
    assert status == 200 and json.loads(body)["status"] == "Healthy"


def test_every_served_model_predicts_like_the_offline_model(server, exported, tiny_leaves):
    report, config = exported
    images = sorted((tiny_leaves / "test").rglob("*.png"))[::2]
    expected = offline_top1(config.checkpoint, images)
    for model in MODELS:
        served = []
        for image in images:
            status, body = request(f"{server['inference']}/predictions/{model}", data=image.read_bytes())
            assert status == 200, body
            answer = json.loads(body)
            assert answer["model_version"] == report["version"]
            served.append(answer["predictions"][0]["index"])
        assert served == expected, model


def test_curl_multipart_and_raw_uploads(server, tiny_leaves):
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    url = f"{server['inference']}/predictions/leafnet"
    raw = subprocess.run(["curl", "-s", "-X", "POST", url, "-T", str(image)], capture_output=True, check=True)
    form = subprocess.run(["curl", "-s", "-X", "POST", url, "-F", f"data=@{image}"], capture_output=True, check=True)
    assert json.loads(raw.stdout) == json.loads(form.stdout)
    assert len(json.loads(raw.stdout)["predictions"]) == 4  # top-5 capped at the 4 classes


def test_bad_input_gets_a_json_reason_and_the_worker_survives(server, tiny_leaves):
    url = f"{server['inference']}/predictions/leafnet-onnx-int8"
    status, body = request(url, data=b"certainly not a PNG", headers={"Content-Type": "application/octet-stream"})
    assert status == 400 and "not an image" in json.loads(body)["error"]
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    status, _ = request(url, data=image.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert status == 200


def test_model_api_refuses_remote_registration(server):
    status, _ = request(f"{server['management']}/models?url=https://example.com/evil.mar", data=b"", method="POST")
    assert status == 405


def test_prometheus_metrics_count_requests(server):
    status, body = request(f"{server['metrics']}/metrics")
    assert status == 200 and b"ts_inference_requests_total" in body


def test_serve_and_predict_scripts(server, exported, tiny_leaves, tmp_path):
    """scripts/serve.sh start|status|stop and scripts/predict.sh, on their own server beside the fixture's."""
    _, config = exported
    port = free_port()
    properties = (REPO / "config" / "torchserve" / "config.properties").read_text()
    for default in (8080, 8081, 8082):
        properties = properties.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port if default == 8080 else free_port()}")
    properties = free_grpc_ports(properties)
    (tmp_path / "config.properties").write_text(properties)
    env = {
        **os.environ,
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
        assert "leafnet-onnx-int8.mar" in started.stdout
        status = subprocess.run([*serve, "status"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and "Healthy" in status.stdout
        predicted = subprocess.run(
            [str(REPO / "scripts" / "predict.sh"), str(image)], env=env, capture_output=True, text=True
        )
        assert predicted.returncode == 0, predicted.stderr
        assert json.loads(predicted.stdout)["predictions"][0]["label"] == image.parent.name
        missing = subprocess.run([*serve, "start", "onnx-fp16"], env=env, capture_output=True, text=True)
        assert missing.returncode == 2 and "leafnet-onnx-fp16.mar not found" in missing.stderr
    finally:
        stopped = subprocess.run([*serve, "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0
    assert subprocess.run([*serve, "status"], env=env, capture_output=True).returncode == 1
