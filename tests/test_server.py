"""`leafnet serve start|stop|status` (leafnet/server.py): its refusals, and a real server started, called,
asked and stopped from a directory outside the checkout, with the profiles the package carries."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from leafnet.errors import LeafnetError
from leafnet.profiles import PROFILES, PROXY, TORCHSERVE, profile_files
from leafnet.server import STOP_TIMEOUT_S, ServeConfig, running_pid, start, status, stop
from tests.conftest import SERVER_READY_TIMEOUT_S, free_port
from tests.test_serving import loopback_properties, request

SERVE = [sys.executable, "-m", "leafnet", "serve"]


def test_every_profile_names_a_torchserve_properties_and_a_caddyfile_of_the_package():
    for name in PROFILES:
        properties, caddyfile = profile_files(name)
        assert properties.parent == TORCHSERVE and properties.is_file()
        assert caddyfile.parent == PROXY and caddyfile.is_file()
    with pytest.raises(LeafnetError, match="unknown profile 'aws': choose one of local, gce, cloudrun"):
        profile_files("aws")


def test_serve_without_a_subcommand_names_them(run_script):
    for args, said in ((["serve"], "leafnet serve needs a subcommand"), (["serve", "x"], "'leafnet serve x'")):
        refused = run_script("../leafnet/__main__.py", *args)  # `python -m leafnet serve`, in this process
        assert refused.returncode == 2 and said in refused.stderr
        assert refused.stderr.strip().endswith("serve start, serve stop, serve status")


def test_start_refuses_a_missing_archive_and_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LeafnetError, match=r"^model_store/leafnet-onnx-int8\.mar not found: export it first"):
        start(ServeConfig(variant="onnx-int8"))
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_a_stale_pid_file_is_not_a_server(tmp_path):
    """A pid file whose process is gone, or whose pid now belongs to another process (here: this one)."""
    config = ServeConfig(log_dir=str(tmp_path), port=free_port())
    pid_file = tmp_path / "supervisor.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert running_pid(config) is None
    stop(config)
    assert not pid_file.exists()
    assert status(config) == (False, f"nothing answers at http://127.0.0.1:{config.port}")


def test_start_refuses_a_port_something_else_answers_on(exported, tmp_path):
    _, export = exported
    port = free_port()
    other = http.server.HTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        config = ServeConfig(model_store=export.model_store, port=port, log_dir=str(tmp_path / "logs"))
        with pytest.raises(LeafnetError, match=f"something already answers at http://127.0.0.1:{port}"):
            start(config)
    finally:
        other.shutdown()
        other.server_close()
    assert not (tmp_path / "logs").exists()


def test_a_supervisor_that_exits_at_once_fails_start_with_its_last_lines(exported, tmp_path):
    """A real supervisor refusing a profile without TorchServe's addresses: start says so and cleans up."""
    _, export = exported
    profile = tmp_path / "broken.properties"
    profile.write_text("model_store=model_store\n")
    logs = tmp_path / "logs"
    config = ServeConfig(model_store=export.model_store, ts_config=str(profile), port=free_port(), log_dir=str(logs))
    with pytest.raises(LeafnetError) as refused:
        start(config)
    first, *tail = str(refused.value).splitlines()
    see = f"see {logs / 'supervisor.log'} and {logs / 'model_log.log'}"
    assert first == f"the supervisor exited (1) before serving; {see}"
    assert any("broken.properties sets no inference_address" in line for line in tail)
    assert not (logs / "supervisor.pid").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_leafnet_serve_starts_answers_and_stops_from_a_directory_outside_the_checkout(exported, tiny_leaves, tmp_path):
    """What an installed wheel is used like: cwd a project folder of its own (a space in its name) with its
    model store; the proxy's Caddyfile and the supervisor come from the package. TorchServe's ports move to
    free ones in a copy of the local profile beside its own files (ts_config=), which the supervisor finds
    relative to the copy."""
    _, export = exported
    work = tmp_path / "a project"
    (work / "model_store").mkdir(parents=True)
    shutil.copy(Path(export.model_store) / "leafnet.mar", work / "model_store")
    profile = work / "profile"
    profile.mkdir()
    properties, urls, _ = loopback_properties("config.properties", "unused", {"leafnet": "leafnet.mar"}, anchored=False)
    (profile / "config.properties").write_text(properties)
    for name in ("metrics.yaml", "log4j2.xml"):
        shutil.copy(TORCHSERVE / name, profile / name)
    (tmp_path / "tmp").mkdir()  # TorchServe's pid file lives in TMPDIR: apart from any other server's
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    url = f"http://127.0.0.1:{free_port()}"
    options = [f"port={url.rsplit(':', 1)[1]}", "ts_config=profile/config.properties"]

    def serve(action: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [*SERVE, action, *options]
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    logs = work / "runs" / "torchserve"
    image = sorted((tiny_leaves / "test").rglob("*.png"))[0]
    try:
        started = serve("start", timeout=SERVER_READY_TIMEOUT_S + 60)
        assert started.returncode == 0, started.stderr
        assert f"serving leafnet.mar behind the proxy: curl -X POST {url}/predictions/leafnet -H" in started.stdout
        answered, body = request(f"{url}/predictions/leafnet", data=image.read_bytes())
        assert answered == 200, body
        assert json.loads(body)["predictions"][0]["label"] == image.parent.name
        shown = serve("status")
        assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "Healthy"
        # the copy's own files, by absolute path; log4j's as a URI (the folder name has a space)
        effective = (logs / "state" / "config.properties").read_text()
        assert f"\nmetrics_config={profile / 'metrics.yaml'}\n" in effective
        assert f"-Dlog4j.configurationFile={(profile / 'log4j2.xml').as_uri()}" in effective
    finally:  # whatever failed above, nothing is left running
        stopped = serve("stop", timeout=STOP_TIMEOUT_S + 30)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert request(f"{url}/ping")[0] is None and request(f"{urls['inference']}/ping")[0] is None
    # log4j2.xml took: TorchServe logged to its files in log_dir, nothing of the frontend's to stdout
    assert (logs / "model_log.log").is_file() and (logs / "ts_log.log").is_file()
    assert "org.pytorch.serve" not in (logs / "supervisor.log").read_text()
    assert not (logs / "supervisor.pid").exists()
    assert sorted(path.name for path in work.iterdir()) == ["model_store", "profile", "runs"]
    assert serve("status").returncode == 1
