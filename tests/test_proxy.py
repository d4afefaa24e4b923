"""The deployed topology for real: leafnet/serving/supervisor.py running the Caddy proxy (leafnet/profiles/proxy)
in front of TorchServe (leafnet/profiles/torchserve), both on free loopback ports: hostile requests, the GCE bearer
token, draining on SIGTERM, TorchServe's locked surface, Cloud Run's stdout logging."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from leafnet.bench.hostile import HostileConfig, run_hostile
from leafnet.profiles import PROXY
from tests.conftest import REPO, SERVER_READY_TIMEOUT_S, free_port
from tests.test_serving import loopback_properties, rebatched_archive, request

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TOKEN = "t" * 24 + "0123456789abcdef"  # 40 characters: the proxy wants 32 or more


@dataclass
class Proxied:
    url: str  # the proxy: what clients call
    torchserve: dict[str, str]  # TorchServe's own addresses, on loopback behind it
    process: subprocess.Popen  # the supervisor
    log: Path


@contextlib.contextmanager
def proxied(base: Path, profile: str, model_store: str, models: dict[str, str], model_api: bool = False, **env: str):
    """The supervisor serving `models` with profile `profile` (config.properties + local.Caddyfile for
    "local"), stopped with SIGTERM on exit. model_api=True turns TorchServe's model API on (a test of what
    allowed_urls still refuses)."""
    ts_profile = "config.properties" if profile == "local" else f"{profile}.properties"
    properties, urls, _ = loopback_properties(ts_profile, model_store, models)
    if model_api:
        properties = properties.replace("enable_model_api=false", "enable_model_api=true")
    (base / "ts.properties").write_text(properties)
    port = free_port()
    logs = base / "logs"
    environment = {
        **os.environ, "TMPDIR": str(base), "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs),
        "PORT": str(port), "LEAFNET_PROXY_BIND": "127.0.0.1", "LEAFNET_BODY_TIMEOUT": "3s", **env,
    }  # fmt: skip
    command = [
        sys.executable, str(REPO / "leafnet" / "serving" / "supervisor.py"),
        "--ts-config", str(base / "ts.properties"),
        "--proxy-config", str(PROXY / f"{profile}.Caddyfile"),
        "--model-store", model_store, "--models", ",".join(f"{k}={v}" for k, v in models.items()),
        "--state-dir", str(base / "state"), "--ready-timeout", str(SERVER_READY_TIMEOUT_S),
    ]  # fmt: skip
    log = base / "supervisor.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=environment, cwd=base, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S + 10
    try:
        while request(f"{url}/ping")[0] != 200:
            assert process.poll() is None, f"the supervisor exited {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not serving:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield Proxied(url, urls, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def octet(image: bytes, **headers: str) -> dict:
    return {"data": image, "headers": {"Content-Type": "application/octet-stream", **headers}}


def test_hostile_requests_get_a_4xx_and_the_cloud_run_instance_survives(exported, tiny_leaves, tmp_path):
    """The Cloud Run profile (its 384 MiB heap included) behind its proxy, against the hostile suite."""
    _, config = exported
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    with proxied(tmp_path, "cloudrun", config.model_store, {"leafnet": "leafnet-onnx-int8.mar"}) as served:
        suite = HostileConfig(url=served.url, image=str(image), pid=served.process.pid, slow_body_s=6)
        report = run_hostile(suite, log=print)
        by_case = {o.case: o for o in report.outcomes}
        assert report.ok, [o for o in report.outcomes if not o.ok]
        assert by_case["form_10mb"].status == 415 and by_case["multipart_many_parts"].status == 400
        # Both answered by the proxy itself (its reasons), before TorchServe could parse the body.
        assert "form bodies are refused" in by_case["form_10mb"].detail
        assert "more than 4 parts" in by_case["multipart_many_parts"].detail
        assert served.process.poll() is None
    assert served.process.returncode == 0  # stopped by SIGTERM, not by a crash


def test_gce_proxy_checks_a_bearer_token_that_rotates_without_a_restart(exported, tiny_leaves, tmp_path):
    _, config = exported
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0].read_bytes()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # Secret Manager's payload may end in a newline
    with proxied(tmp_path, "gce", config.model_store, {"leafnet": "leafnet.mar"},
                 LEAFNET_TOKEN_FILE=str(token_file)) as served:  # fmt: skip
        predict = f"{served.url}/predictions/leafnet"
        status, body = request(predict, **octet(image))
        assert status == 401 and "bearer token" in json.loads(body)["message"]
        assert request(predict, **octet(image, Authorization="Bearer " + "x" * len(TOKEN)))[0] == 401
        assert request(predict, **octet(image, Authorization=f"Bearer {TOKEN}"))[0] == 200
        assert request(f"{served.url}/ping")[0] == 200  # the load balancer's health check has no token
        assert not (tmp_path / "key_file.json").exists()  # TorchServe's own expiring tokens are off
        # Rotation: the next request reads the new file; the old token is refused at once.
        rotated = "r" * 40
        token_file.write_text(rotated)
        assert request(predict, **octet(image, Authorization=f"Bearer {TOKEN}"))[0] == 401
        assert request(predict, **octet(image, Authorization=f"Bearer {rotated}"))[0] == 200
        # Two lines, two accepted tokens: the overlap of a rotation.
        token_file.write_text(f"{rotated}\n{TOKEN}\n")
        for token in (rotated, TOKEN):
            assert request(predict, **octet(image, Authorization=f"Bearer {token}"))[0] == 200
        # A short token is no token: nobody gets in, not even with the file's own content.
        token_file.write_text("short")
        assert request(predict, **octet(image, Authorization="Bearer short"))[0] == 401
        token_file.unlink()
        status, body = request(predict, **octet(image, Authorization="Bearer "))
        assert status == 503 and "no bearer token is configured" in json.loads(body)["message"]


def test_hostile_requests_on_gce_include_missing_and_wrong_tokens(exported, tiny_leaves, tmp_path):
    _, config = exported
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    (tmp_path / "token").write_text(TOKEN)
    with proxied(tmp_path, "gce", config.model_store, {"leafnet": "leafnet-onnx-int8.mar"},
                 LEAFNET_TOKEN_FILE=str(tmp_path / "token")) as served:  # fmt: skip
        suite = HostileConfig(url=served.url, image=str(image), token=TOKEN, slow_body_s=4)
        report = run_hostile(suite, log=print)
        assert report.ok, [o for o in report.outcomes if not o.ok]
        by_case = {o.case: o.status for o in report.outcomes}
        assert by_case["token_missing"] == by_case["token_wrong"] == 401
        assert by_case["token_skipped_by_dots"] == 401  # the raw path is not /ping: the token is still wanted


def test_sigterm_lets_the_requests_in_flight_finish(exported, tiny_leaves, tmp_path):
    """Eight requests wait in TorchServe's batch queue (maxBatchDelay 3 s) when SIGTERM arrives: the proxy
    stops accepting, all eight get their 200, then TorchServe stops and the supervisor exits 0."""
    _, config = exported
    archive = rebatched_archive(config, tmp_path / "archive", "leafnet-slowbatch", batch=16, delay_ms=3000)
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0].read_bytes()
    base = tmp_path / "served"
    base.mkdir()
    with proxied(base, "local", config.model_store, {"leafnet": archive}) as served:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(request, f"{served.url}/predictions/leafnet", **octet(image)) for _ in range(8)]
            time.sleep(1.0)  # all eight sent, none answered: the batch waits 3 s
            assert not any(f.done() for f in futures)
            served.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert request(f"{served.url}/ping")[0] is None  # no new connections while draining
            answers = [f.result() for f in futures]
        assert [status for status, _ in answers] == [200] * 8, answers
        assert served.process.wait(30) == 0
    assert request(f"{served.torchserve['inference']}/ping")[0] is None  # TorchServe stopped after them


def test_torchserve_registers_no_model_and_no_workflow(exported, tmp_path):
    """On TorchServe's own loopback management port. With the model API off (every profile) nothing can be
    registered; turned on, allowed_urls (anchored by the supervisor to the served store) admits archives of
    that store only, and the empty workflow_store and the .mar-only pattern leave no workflow to register."""
    _, config = exported
    store = Path(config.model_store).resolve()
    (tmp_path / "off").mkdir()
    with proxied(tmp_path / "off", "local", config.model_store, {"leafnet": "leafnet.mar"}) as served:
        status, _ = request(f"{served.torchserve['management']}/models?url=file://{store}/leafnet.mar", method="POST")
        assert status is not None and status >= 400
        effective = (tmp_path / "off" / "state" / "config.properties").read_text()
        assert f"allowed_urls=file://\\\\Q{store}/\\\\E[^/]+\\\\.mar" in effective
    (tmp_path / "on").mkdir()
    with proxied(tmp_path / "on", "local", config.model_store, {"leafnet": "leafnet.mar"}, model_api=True) as served:
        management = served.torchserve["management"]

        def register(kind: str, url: str) -> str:
            status, body = request(f"{management}/{kind}?url={url}&model_name=other&initial_workers=0", method="POST")
            assert status is not None and status >= 400, (url, body)  # never registered
            return json.loads(body)["message"]

        refused = "does not match any allowed URL(s)"
        # The served store passes allowed_urls (and stops at the copy TorchServe would make of it).
        assert "Model file already exists" in register("models", f"file://{store}/leafnet-onnx-int8.mar")
        for url in (f"file://{store}x/leafnet.mar", "http://127.0.0.1:9/leafnet.mar",
                    f"file://{store}/leafnet.mar.war", f"file://{store}/sub/leafnet.mar"):  # fmt: skip
            assert refused in register("models", url), url
        assert "Relative path is not allowed" in register("models", f"file://{store}/../model_store/leafnet.mar")
        assert refused in register("workflows", f"file://{store}/w.war")
        assert refused in register("workflows", "http://127.0.0.1:9/w.war")
        assert "not found in workflow store" in register("workflows", "w.war")
        assert list((tmp_path / "on" / "state" / "no-workflows").iterdir()) == []


def test_cloud_run_logs_only_to_stdout(exported, tiny_leaves, tmp_path):
    """Cloud Run's disk is memory: the proxy's access lines (JSON, with the request id) and the worker's
    lines, drift statistics included, go to stdout; no log file is written."""
    _, config = exported
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0].read_bytes()
    with proxied(tmp_path, "cloudrun", config.model_store, {"leafnet": "leafnet.mar"}) as served:
        status, _ = request(f"{served.url}/predictions/leafnet", **octet(image))
        assert status == 200
        headers = {"Content-Type": "application/octet-stream"}
        refused = urllib.request.Request(f"{served.url}/predictions/leafnet", data=b"\0" * 100, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(refused, timeout=30)
        request_id = error.value.headers["X-Request-Id"]
        assert error.value.code == 400 and len(request_id) == 36
        time.sleep(1)
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.log")) == []
    stdout = served.log.read_text()
    assert "MODEL_LOG" in stdout and "LEAFNET_DRIFT {" in stdout
    access = [json.loads(line) for line in stdout.splitlines() if '"handled request"' in line]
    assert any(line["request"]["uri"] == "/predictions/leafnet" and line["status"] == 200 for line in access)
    assert all(line["resp_headers"].get("X-Request-Id") for line in access)
    # The handler logs each refusal with the proxy's id: one grep joins the two lines.
    assert f"refused request {request_id}: 400 not_image" in stdout


def test_a_dead_proxy_stops_torchserve_and_the_supervisor_fails(exported, tmp_path):
    """Half a server is no server: the platform must see the instance exit and restart it whole."""
    _, config = exported
    with proxied(tmp_path, "local", config.model_store, {"leafnet": "leafnet.mar"}) as served:
        children = psutil.Process(served.process.pid).children()
        caddy = next(p for p in children if "caddy" in " ".join(p.cmdline()))
        # TorchServe's launcher, its JVM and the JVM's Python workers: every one must be gone.
        torchserve = [p for child in children if child != caddy for p in (child, *child.children(recursive=True))]
        assert len(torchserve) >= 3, torchserve
        caddy.kill()
        assert served.process.wait(60) == 1
        log = served.log.read_text()
        assert "the proxy exited" in log and log.rstrip().endswith("supervisor: stopped"), log[-3000:]
        assert [p for p in torchserve if running(p)] == []


def running(process: psutil.Process) -> bool:
    """Whether `process` still runs: a zombie (exited, not yet reaped by whoever adopted it) does not."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
