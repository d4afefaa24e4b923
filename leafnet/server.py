"""Local serving, what `leafnet serve start|stop|status` does: the supervisor (leafnet/serving/supervisor.py)
runs TorchServe on loopback and the Caddy proxy in front of it on http://127.0.0.1:<port>, the only
address clients use, with a profile the package carries (leafnet/profiles), so it works from any
directory, in a checkout or from an installed wheel.

- start: the supervisor in a session of its own (the servers outlive the command), its output in
  <log_dir>/supervisor.log, its pid in <log_dir>/supervisor.pid; ready once /ping through the proxy says
  Healthy, which it says only after every worker has loaded the model (the proxy starts then).
- stop: SIGTERM to the supervisor, which drains the proxy and then stops TorchServe.
- status: the proxy's /ping.

Not in leafnet/serving: every module there is packed into each model archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from leafnet.errors import LeafnetError
from leafnet.export.naming import VARIANT_BY_NAME, default_archive
from leafnet.extras import require
from leafnet.profiles import profile_files

log = logging.getLogger(__name__)

# Run as a file, as the serve image runs it: it is standard library only and imports nothing of leafnet.
SUPERVISOR = Path(str(resources.files("leafnet.serving"))) / "supervisor.py"
# The supervisor starts the proxy once the workers are ready: a margin for the proxy's own start.
PROXY_START_S = 10
# The proxy drains for its grace period (8 s) plus 5, then TorchServe has 20 s before the supervisor kills
# it: stop allows all of it.
STOP_TIMEOUT_S = 45
POLL_S = 0.5
LOG_TAIL_LINES = 5


@dataclass
class ServeConfig:
    # the export variant to serve: torchscript, onnx, onnx-int8, ... (leafnet/export/naming.py names its archive)
    variant: str = "torchscript"
    model_store: str = "model_store"  # the folder export wrote the archives to (relative to the current directory)
    # local, gce or cloudrun: TorchServe's properties and the proxy's Caddyfile (leafnet/profiles)
    profile: str = "local"
    ts_config: str = ""  # a TorchServe properties file to use instead of the profile's
    proxy_config: str = ""  # a Caddyfile to use instead of the profile's
    port: int = 8080  # the proxy's port: clients call http://127.0.0.1:<port>
    log_dir: str = "runs/torchserve"  # logs of TorchServe, the proxy and the supervisor, and the supervisor's pid file
    ready_timeout_s: float = 120.0  # seconds for every worker to load the model before start gives up


def url(config: ServeConfig) -> str:
    return f"http://127.0.0.1:{config.port}"


def pid_file(config: ServeConfig) -> Path:
    return Path(config.log_dir) / "supervisor.pid"


def supervisor_log(config: ServeConfig) -> Path:
    return Path(config.log_dir) / "supervisor.log"


def ping(base_url: str) -> tuple[int, str] | None:
    """(status, body) of GET /ping, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:  # the proxy answers 502 while TorchServe is down
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def healthy(answer: tuple[int, str] | None) -> bool:
    return answer is not None and answer[0] == 200 and "Healthy" in answer[1]


def supervisor_alive(pid: int) -> bool:
    """Whether `pid` is a running supervisor: a pid file can outlive its process (a reboot, a kill -9), and
    the system may have given the pid to another process since."""
    with contextlib.suppress(ChildProcessError):  # our own child (start, then stop, in one process): reaped
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process
        return False
    if not Path("/proc/self").is_dir():  # no /proc (macOS): the pid alone has to do
        return True
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(argument.decode(errors="replace")).name == SUPERVISOR.name for argument in arguments)


def running_pid(config: ServeConfig) -> int | None:
    """The pid of the live supervisor the pid file names, or None."""
    try:
        pid = int(pid_file(config).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if supervisor_alive(pid) else None


def served_files(config: ServeConfig) -> tuple[Path, Path]:
    """(TorchServe properties, Caddyfile): the profile's, or the ts_config and proxy_config given instead."""
    properties, caddyfile = profile_files(config.profile)
    chosen = []
    for option, default in (("ts_config", properties), ("proxy_config", caddyfile)):
        path = Path(getattr(config, option) or default)
        if not path.is_file():
            raise LeafnetError(f"{option}: {path} not found")
        chosen.append(path.resolve())
    return chosen[0], chosen[1]


def start(config: ServeConfig) -> None:
    """Starts serving `config.variant` and returns once it answers; stops what it started when it does not."""
    require("serve", "leafnet serve")
    if not 0 < config.port < 65536:
        raise LeafnetError(f"port={config.port}: a TCP port is 1-65535")
    if config.ready_timeout_s <= 0:
        raise LeafnetError(f"ready_timeout_s={config.ready_timeout_s:g}: give the workers some seconds to load")
    if config.variant not in VARIANT_BY_NAME:
        raise LeafnetError(f"unknown variant {config.variant!r}; choose from {', '.join(VARIANT_BY_NAME)}")
    properties, caddyfile = served_files(config)
    archive = default_archive(config.variant)
    store = Path(config.model_store).resolve()
    if not (store / archive).is_file():
        raise LeafnetError(
            f"{Path(config.model_store) / archive} not found: export it first (leafnet export checkpoint=... "
            f"writes an archive per served variant; in a checkout: make export)"
        )
    refuse_if_serving(config)
    if ping(url(config)) is not None:
        raise LeafnetError(f"something already answers at {url(config)}: stop it, or serve on another port=")
    log_dir = Path(config.log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    # One start at a time per log_dir: two would share the pid file and the log, and the loser's cleanup
    # would remove the winner's pid file. The lock goes with this process (and its file descriptor).
    with open(log_dir / "start.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LeafnetError(f"another leafnet serve start is running for {config.log_dir}") from None
        refuse_if_serving(config)  # again, now that no other start can get in between
        _start_locked(config, log_dir, properties, caddyfile, archive, store)


def refuse_if_serving(config: ServeConfig) -> None:
    pid = running_pid(config)
    if pid is not None:
        raise LeafnetError(f"already serving (supervisor pid {pid}, {pid_file(config)}): leafnet serve stop first")


def _start_locked(config: ServeConfig, log_dir: Path, properties: Path, caddyfile: Path, archive: str, store: Path):
    command = [
        sys.executable, str(SUPERVISOR), "--ts-config", str(properties), "--proxy-config", str(caddyfile),
        "--model-store", str(store), "--models", f"leafnet={archive}", "--ready-timeout", str(config.ready_timeout_s),
        "--state-dir", str(log_dir / "state"),
    ]  # fmt: skip
    # The proxy's Caddyfile reads PORT and LOG_LOCATION, TorchServe's log4j2.xml LOG_LOCATION and METRICS_LOCATION.
    env = {**os.environ, "PORT": str(config.port), "LOG_LOCATION": str(log_dir)}
    env.setdefault("METRICS_LOCATION", str(log_dir))
    # A session of its own: the servers outlive this command and a terminal's Ctrl-C. The JVM keeps its
    # stdout open as long as it runs, so a file, never a pipe.
    with open(log_dir / "supervisor.log", "w") as output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    pid_file(config).write_text(f"{process.pid}\n")
    wait_until_serving(config, process)
    raw_body = "-H 'Content-Type: application/octet-stream' --data-binary @leaf.png"  # not a form: the proxy's 415
    predict = f"curl -X POST {url(config)}/predictions/leafnet {raw_body}"
    log.info(f"serving {archive} behind the proxy: {predict}")


def wait_until_serving(config: ServeConfig, process: subprocess.Popen) -> None:
    """Until /ping through the proxy says Healthy; a supervisor that exits or a deadline that passes stops
    what is left and fails with the log's last lines."""
    deadline = time.monotonic() + config.ready_timeout_s + PROXY_START_S
    # Healthy while our supervisor lives: a dying one's port may already answer for another server.
    while not (healthy(ping(url(config))) and process.poll() is None):
        if process.poll() is not None:
            reason = f"the supervisor exited ({process.returncode}) before serving"
        elif time.monotonic() > deadline:
            reason = f"not serving after {config.ready_timeout_s:g} s"
        else:
            time.sleep(POLL_S)
            continue
        if process.poll() is None and not terminate(process.pid):
            with contextlib.suppress(ProcessLookupError):  # its session: the supervisor and what it started
                os.killpg(process.pid, signal.SIGKILL)
        pid_file(config).unlink(missing_ok=True)
        logs = supervisor_log(config)
        tail = logs.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if logs.is_file() else []
        raise LeafnetError(
            f"{reason}; see {logs} and {Path(config.log_dir) / 'model_log.log'}"
            + "".join(f"\n  {line}" for line in tail)
        )


def terminate(pid: int) -> bool:
    """SIGTERM to the supervisor, then up to STOP_TIMEOUT_S for it to drain and stop the servers; whether
    it has gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while supervisor_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def stop(config: ServeConfig) -> None:
    pid = running_pid(config)
    if pid is None:
        pid_file(config).unlink(missing_ok=True)  # a stale one: its process is gone
        log.info(f"not serving (no live supervisor in {pid_file(config)})")
        return
    if not terminate(pid):
        raise LeafnetError(
            f"supervisor {pid} still running {STOP_TIMEOUT_S} s after SIGTERM; see {supervisor_log(config)}"
        )
    pid_file(config).unlink(missing_ok=True)
    log.info("stopped")


def status(config: ServeConfig) -> tuple[bool, str]:
    """(healthy, what /ping through the proxy answered, or that nothing answers)."""
    answer = ping(url(config))
    if answer is None:
        return False, f"nothing answers at {url(config)}"
    return healthy(answer), answer[1].strip()
