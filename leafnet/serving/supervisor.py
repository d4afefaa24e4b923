"""One init for the served model: TorchServe on loopback, the Caddy proxy in front of it, one shutdown order.

    python leafnet/serving/supervisor.py --ts-config leafnet/profiles/torchserve/cloudrun.properties \
        --proxy-config leafnet/profiles/proxy/cloudrun.Caddyfile --model-store model_store --models leafnet=leafnet.mar

It is the serve image's command (under tini), what `leafnet serve start` runs locally (leafnet/server.py), and
what the tests run: the same start and stop order everywhere.

- The profile's own files (metrics_config, the log4j configurationFile in vmargs) are named relative to the
  properties file, wherever that lies (a checkout, an installed wheel, the image): the effective copy
  TorchServe gets names them by absolute path, so the current directory does not matter. Paths that are
  the user's (the model store) come as arguments.

- Start: TorchServe first; the proxy only once every worker has loaded the model, so the public port opens
  when the server can answer (Cloud Run's TCP startup probe and the load balancer's health check see a
  ready server, never a 502).
- SIGTERM or SIGINT (what Cloud Run, GCE and `docker stop` send): the proxy first. Caddy stops accepting
  and lets requests in flight finish for its grace_period (LEAFNET_GRACE, under Cloud Run's 10 s); then
  TorchServe, which has by then answered them all, is stopped.
- Either child exiting on its own stops the other and ends the supervisor with an error, so the platform
  restarts the whole instance rather than serving half of it.

Standard library only: the serve image runs it without the leafnet package (docker/serve.Dockerfile).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_POLL_S = 0.5
GO_MEMORY_LIMIT = "128MiB"
EXIT_ON_CHILD_FAILURE = 1


def log(message: str) -> None:
    print(f"supervisor: {message}", file=sys.stderr, flush=True)


def properties(path: Path) -> dict[str, str]:
    """The key=value lines of a TorchServe config.properties, $$NAME$$ filled from the environment as
    TorchServe does."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            for name, setting in os.environ.items():
                value = value.replace(f"$${name}$$", setting)
            values[key.strip()] = value.strip()
    return values


def loopback_address(url: str) -> str:
    """host:port of a TorchServe address, reached on loopback."""
    host_port = url.split("://", 1)[-1].rstrip("/")
    return host_port.replace("0.0.0.0", "127.0.0.1")


def executable(name: str) -> str:
    """A tool of this Python's environment (the venv's caddy and torchserve), else from PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"error: {name} not found beside {sys.executable} or on PATH (install the serve requirements)")
    return found


def workers_ready(management: str, models: list[str]) -> bool:
    """Whether every worker of every model is READY: /ping turns healthy seconds before they have loaded."""
    for model in models:
        try:
            with urllib.request.urlopen(f"http://{management}/models/{model}", timeout=2) as response:
                workers = json.loads(response.read())[0]["workers"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
            return False
        if not workers or any(w.get("status") != "READY" for w in workers):
            return False
    return True


# The files a profile ships with (leafnet/profiles/torchserve): named relative to the properties file.
LOG4J_OPTION = re.compile(r"(-Dlog4j2?\.configurationFile=)(\S+)")
URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def beside(value: str, profile: Path) -> Path | None:
    """The file `profile` names as `value`: relative to the profile's folder unless absolute. None for what
    is no local path: a URI (classpath:, file:) or a $$NAME$$ that TorchServe fills in itself. A file that
    is not there fails here, in one line: TorchServe would stop on a missing metrics file, and log4j would
    fall back to logging everything to stdout without a word."""
    if "$$" in value or URI_SCHEME.match(value):
        return None
    path = (profile.resolve().parent / value).resolve()
    if not path.is_file():
        raise SystemExit(f"error: {profile} names {value}, not found at {path}")
    return path


def profile_files_anchored(text: str, profile: Path) -> str:
    """The properties `text` (profile's, or an edited copy of it) with the files it names (metrics_config,
    vmargs' log4j configurationFile) resolved against the profile's folder: the metrics file as an absolute
    path, the log4j file as a file: URI, since TorchServe splits vmargs at white space and a URI has none,
    whatever the folder is called. Everything else as written."""

    def log4j(option: re.Match) -> str:
        entries = []
        for entry in option.group(2).split(","):  # log4j takes a comma-separated list
            path = beside(entry, profile)
            entries.append(path.as_uri() if path else entry)
        return option.group(1) + ",".join(entries)

    lines = []
    for line in text.splitlines():
        key, separator, value = line.partition("=")
        if separator and key.strip() == "metrics_config":
            path = beside(value.strip(), profile)
            line = f"metrics_config={path}" if path else line
        elif separator and key.strip() == "vmargs":
            line = LOG4J_OPTION.sub(log4j, line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def anchored_config(profile: Path, model_store: str | None, config: dict[str, str], state: Path) -> Path:
    """The profile as TorchServe gets it: its own files by absolute path (profile_files_anchored), allowed_urls
    anchored to the model store actually served (the profile cannot know its absolute path) and
    workflow_store an empty directory of the supervisor's own. With the model API off neither is reachable;
    should it be turned on, nothing but an archive of this store can be registered, and no workflow (.war)
    at all."""
    store = Path(model_store or config.get("model_store", "model_store")).resolve()
    workflows = state / "no-workflows"
    workflows.mkdir(parents=True, exist_ok=True)
    # \\Q...\\E: the path is literal, whatever regex characters it holds; Matcher.matches() anchors both ends.
    # Each backslash is doubled: a .properties file drops a lone one.
    pinned = {"allowed_urls": f"file://\\\\Q{store}/\\\\E[^/]+\\\\.mar", "workflow_store": str(workflows)}
    text = profile_files_anchored(profile.read_text(), profile)
    lines = [line for line in text.splitlines() if line.split("=", 1)[0].strip() not in pinned]
    lines += [f"{key}={value}" for key, value in pinned.items()]
    effective = state / "config.properties"
    effective.write_text("\n".join(lines) + "\n")
    return effective


def model_names(models: str | None, config: dict[str, str]) -> list[str]:
    spec = models or config.get("load_models", "")
    return [entry.split("=", 1)[0] for entry in spec.split(",") if "=" in entry]


def group_alive(child: subprocess.Popen) -> bool:
    """Whether any process of the child's group (its own session: the group id is its pid) still runs,
    the child itself reaped as soon as it exits."""
    child.poll()
    try:
        os.killpg(child.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group we may not signal: still there
        return True
    return True


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = properties(Path(args.ts_config))
        self.models = model_names(args.models, self.config)
        if not self.models:
            raise SystemExit(f"error: no model to serve: pass --models or set load_models in {args.ts_config}")
        for key in ("inference_address", "management_address"):
            if key not in self.config:
                raise SystemExit(f"error: {args.ts_config} sets no {key}: the supervisor needs both")
        self.stopping = False
        # Both found before anything starts: a missing one must not leave the other running.
        self.torchserve_bin, self.caddy_bin = executable("torchserve"), executable("caddy")
        state = Path(args.state_dir or tempfile.mkdtemp(prefix="leafnet-serve-"))
        self.ts_config = anchored_config(Path(args.ts_config), args.model_store, self.config, state)
        self.torchserve: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None

    def on_signal(self, signum: int, _frame) -> None:
        if not self.stopping:
            log(f"{signal.Signals(signum).name}: draining the proxy, then stopping TorchServe")
        self.stopping = True

    def start_torchserve(self) -> None:
        command = [self.torchserve_bin, "--start", "--foreground", "--ncs", "--ts-config", str(self.ts_config)]
        if self.args.model_store:
            command += ["--model-store", self.args.model_store]
        if self.args.models:
            command += ["--models", self.args.models]
        # A session of its own: a terminal's Ctrl-C reaches the supervisor alone, which stops the children
        # in order; and the JVM with its Python workers can be signalled as one group.
        self.torchserve = subprocess.Popen(command, start_new_session=True)

    def start_proxy(self) -> None:
        env = {**os.environ, "LEAFNET_BACKEND": loopback_address(self.config["inference_address"])}
        # Go's collector otherwise lets the heap double between collections: with a few 10 MB bodies
        # buffered that is hundreds of MB of an instance the workers need. A soft limit (the caller's wins).
        env.setdefault("GOMEMLIMIT", GO_MEMORY_LIMIT)
        command = [self.caddy_bin, "run", "--adapter", "caddyfile", "--config", self.args.proxy_config]
        self.proxy = subprocess.Popen(command, env=env, start_new_session=True)

    def wait_for_workers(self) -> bool:
        management = loopback_address(self.config["management_address"])
        deadline = time.monotonic() + self.args.ready_timeout
        while not self.stopping:
            if workers_ready(management, self.models):
                return True
            if self.torchserve.poll() is not None:
                log(f"TorchServe exited ({self.torchserve.returncode}) before its workers were ready")
                return False
            if time.monotonic() > deadline:
                log(f"TorchServe's workers not ready after {self.args.ready_timeout:.0f} s")
                return False
            time.sleep(READY_POLL_S)
        return False

    def stop(self, child: subprocess.Popen | None, name: str, timeout: float) -> None:
        """SIGTERM to the child's process group, then wait for the whole group (TorchServe's launcher exits
        at once while its JVM and workers are still stopping), SIGKILL to what is left after `timeout`."""
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while group_alive(child):
            if time.monotonic() > deadline:
                log(f"{name} still running {timeout:.0f} s after SIGTERM: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        child.wait()

    def shutdown(self) -> None:
        # The proxy drains within its grace period (plus a margin for its own exit); only then TorchServe.
        self.stop(self.proxy, "the proxy", self.args.grace + 5)
        self.stop(self.torchserve, "TorchServe", self.args.stop_timeout)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        try:
            return self._serve()
        finally:  # whatever happened, nothing is left running
            self.shutdown()
            log("stopped")

    def _serve(self) -> int:
        self.start_torchserve()
        if not self.wait_for_workers():
            return 0 if self.stopping else EXIT_ON_CHILD_FAILURE
        self.start_proxy()
        log(f"serving {', '.join(self.models)}: proxy {self.args.proxy_config} in front of TorchServe")
        while not self.stopping:
            for child, name in ((self.torchserve, "TorchServe"), (self.proxy, "the proxy")):
                if child.poll() is not None:
                    log(f"{name} exited ({child.returncode}): stopping the rest")
                    return EXIT_ON_CHILD_FAILURE
            time.sleep(0.2)
        return 0


def grace_seconds(text: str) -> float:
    """Caddy's duration syntax for the grace period (8s, 500ms, 1m30s): how long the proxy may drain."""
    parts = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ms|s|m|h))+)", text.strip())
    if not parts:
        raise SystemExit(f"error: LEAFNET_GRACE={text!r} is not a duration like 8s, 500ms or 1m30s")
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ts-config", required=True, help="TorchServe properties (leafnet/profiles/torchserve/)")
    parser.add_argument("--proxy-config", required=True, help="the profile's Caddyfile (leafnet/profiles/proxy/)")
    parser.add_argument("--model-store", help="TorchServe's model store (default: the config's model_store)")
    parser.add_argument("--models", help="NAME=ARCHIVE.mar to serve (default: the config's load_models)")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for every worker to load")
    parser.add_argument("--state-dir", help="where the effective TorchServe config goes (a new temp dir)")
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="seconds for TorchServe to stop")
    args = parser.parse_args(argv)
    # Caddy reads its grace period from LEAFNET_GRACE as well: one setting for both.
    args.grace = grace_seconds(os.environ.get("LEAFNET_GRACE", "8s"))
    for path in (args.ts_config, args.proxy_config):
        if not Path(path).is_file():
            parser.error(f"{path} not found")
    return args


def main(argv: list[str] | None = None) -> int:
    return Supervisor(parse(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
