"""scripts/deploy_cloudrun.sh and scripts/deploy_gce.sh: the gcloud commands they print and run.

No test calls the real gcloud. Dry runs are parsed with shlex; real runs find a fake `gcloud` that records
its arguments, so a test can compare what ran with what the dry run printed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from leafnet.profiles import PROXY, TORCHSERVE
from tests.conftest import REPO

CLOUDRUN = REPO / "scripts" / "deploy_cloudrun.sh"
GCE = REPO / "scripts" / "deploy_gce.sh"
CLOUD_INIT = REPO / "config" / "gce" / "cloud-init.yaml"
MODEL_CONFIG = yaml.safe_load((REPO / "leafnet" / "serving" / "model-config.yaml").read_text())
BASH = shutil.which("bash")
FAKE_URL = "https://leafnet-abc123-uc.a.run.app"
FAKE_IP = "203.0.113.9"


def deploy(script: Path, *args: str, env: dict[str, str], path: Path) -> subprocess.CompletedProcess:
    """Runs a deploy script with exactly `env` and a PATH of `path` alone: no gcloud unless the test put one there."""
    return subprocess.run(
        [BASH, str(script), *args],
        env={"PATH": str(path), "HOME": str(path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("gcloud ") for line in lines), result.stdout
    # Each line is quoted as shlex would quote it, so it runs as printed.
    assert all(shlex.join(shlex.split(line)) == line for line in lines)
    return [shlex.split(line) for line in lines]


def flags(argv: list[str]) -> dict[str, str | bool]:
    """`--flag value` pairs and bare `--switch`es of a command line (the scripts always print that form)."""
    found: dict[str, str | bool] = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            found[word] = True if following.startswith("--") else following
    return found


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def bare_path(tmp_path) -> Path:
    """A PATH directory with nothing in it: the scripts need no tool but bash (run by its full path)."""
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def fake_gcloud(bare_path, tmp_path) -> Path:
    """A `gcloud` that records each call (arguments separated by US characters, one call per line) in
    the returned log, answers describe calls like the real one, and fails `images describe` for a tag `absent`."""
    log = tmp_path / "gcloud.log"
    script = bare_path / "gcloud"
    script.write_text(
        f"#!{BASH}\n"
        f"{{ printf '%s\\037' \"$@\"; printf '\\n'; }} >> {shlex.quote(str(log))}\n"
        'case "$*" in\n'
        "  *'images describe'*:absent*) echo 'ERROR: image not found' >&2; exit 1 ;;\n"
        f"  *'run services describe'*) echo {FAKE_URL} ;;\n"
        f"  *'compute instances describe'*) echo {FAKE_IP} ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return log


def recorded(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [["gcloud", *line.split("\x1f")[:-1]] for line in log.read_text().splitlines()]


# ---- Cloud Run ----


def test_cloudrun_dry_run_prints_the_deployment_with_defaults_from_the_model_config(bare_path):
    describe_image, run_deploy, describe_service = commands(
        deploy(CLOUDRUN, "--dry-run", env={"PROJECT": "my-proj"}, path=bare_path)
    )
    image = "us-central1-docker.pkg.dev/my-proj/leafnet/leafnet-serve:main"
    assert describe_image == ["gcloud", "artifacts", "docker", "images", "describe", image, "--format", "none"]
    assert run_deploy[:4] == ["gcloud", "run", "deploy", "leafnet"]
    deployed = flags(run_deploy)
    assert deployed["--project"] == "my-proj" and deployed["--region"] == "us-central1"
    assert deployed["--image"] == image
    assert deployed["--port"] == "8080"  # the serve image's PORT
    assert deployed["--cpu"] == "2" and deployed["--memory"] == "2Gi"
    assert deployed["--concurrency"] == str(2 * MODEL_CONFIG["maxWorkers"] * MODEL_CONFIG["batchSize"]) == "16"
    assert deployed["--timeout"] == f"{2 * MODEL_CONFIG['responseTimeout']}s"
    assert deployed["--min-instances"] == "1" and deployed["--max-instances"] == "3"
    assert deployed["--cpu-boost"] is True
    assert deployed["--no-allow-unauthenticated"] is True and "--allow-unauthenticated" not in deployed
    probe = dict(item.split("=", 1) for item in deployed["--startup-probe"].split(","))
    assert probe["httpGet.path"] == "/ping" and probe["httpGet.port"] == "8080"
    window = int(probe["periodSeconds"]) * int(probe["failureThreshold"])
    assert window >= MODEL_CONFIG["startupTimeout"]
    assert "--service-account" not in deployed
    assert describe_service[:5] == ["gcloud", "run", "services", "describe", "leafnet"]
    assert flags(describe_service)["--format"] == "value(status.url)"


def test_cloudrun_defaults_follow_another_model_config(bare_path, tmp_path):
    config = tmp_path / "model-config.yaml"
    config.write_text(
        "minWorkers: 3\nmaxWorkers: 3\nbatchSize: 4   # a comment\nresponseTimeout: 45\nstartupTimeout: 60\n"
    )
    _, run_deploy, _ = commands(
        deploy(CLOUDRUN, "--dry-run", env={"PROJECT": "p", "MODEL_CONFIG": str(config)}, path=bare_path)
    )
    deployed = flags(run_deploy)
    assert deployed["--concurrency"] == "24" and deployed["--timeout"] == "90s"
    assert "failureThreshold=45" in deployed["--startup-probe"]


def test_cloudrun_refuses_a_worker_range_and_warns_when_cpus_and_workers_differ(bare_path, tmp_path):
    config = tmp_path / "model-config.yaml"
    config.write_text("minWorkers: 1\nmaxWorkers: 2\nbatchSize: 4\nresponseTimeout: 30\nstartupTimeout: 120\n")
    result = deploy(CLOUDRUN, "--dry-run", env={"PROJECT": "p", "MODEL_CONFIG": str(config)}, path=bare_path)
    one_line_error(result, "minWorkers and maxWorkers differ", str(config))
    config.write_text("minWorkers: 4\nmaxWorkers: 4\nbatchSize: 4\nresponseTimeout: 30\nstartupTimeout: 120\n")
    result = deploy(CLOUDRUN, "--dry-run", env={"PROJECT": "p", "MODEL_CONFIG": str(config)}, path=bare_path)
    assert result.returncode == 0 and "warning: --cpu 2 but" in result.stderr and "4 workers" in result.stderr
    assert flags(commands(result)[1])["--concurrency"] == "32"


@pytest.mark.parametrize("missing", ["batchSize", "maxWorkers", "minWorkers"])
def test_cloudrun_model_config_without_a_sizing_key_fails_in_one_line(bare_path, tmp_path, missing):
    keys = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "responseTimeout": 30, "startupTimeout": 120}
    config = tmp_path / "model-config.yaml"
    config.write_text("".join(f"{key}: {value}\n" for key, value in keys.items() if key != missing))
    result = deploy(CLOUDRUN, "--dry-run", env={"PROJECT": "p", "MODEL_CONFIG": str(config)}, path=bare_path)
    one_line_error(result, missing, str(config))


def test_cloudrun_flags_beat_environment_and_values_are_quoted(bare_path):
    env = {"PROJECT": "env-proj", "REGION": "europe-west4", "SERVICE": "", "IMAGE_TAG": "0123abc"}
    _, run_deploy, _ = commands(
        deploy(
            CLOUDRUN,
            "--dry-run",
            "--region=us-east1",
            "--concurrency",
            "4",
            "--service-account",
            "run it's@p.iam.gserviceaccount.com",
            env=env,
            path=bare_path,
        )
    )
    deployed = flags(run_deploy)
    assert run_deploy[3] == "leafnet"  # an empty SERVICE takes the default
    assert deployed["--project"] == "env-proj" and deployed["--region"] == "us-east1"
    assert deployed["--image"] == "us-east1-docker.pkg.dev/env-proj/leafnet/leafnet-serve:0123abc"
    assert deployed["--concurrency"] == "4"
    assert deployed["--service-account"] == "run it's@p.iam.gserviceaccount.com"


def test_cloudrun_explicit_image_is_deployed_as_given(bare_path):
    image = "europe-docker.pkg.dev/other/repo/leafnet-serve@sha256:" + "a" * 64
    describe_image, run_deploy, _ = commands(
        deploy(CLOUDRUN, "--dry-run", "--project", "p", "--image", image, env={}, path=bare_path)
    )
    assert describe_image[5] == image and flags(run_deploy)["--image"] == image


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        ([], {}, ["PROJECT", "--project"]),
        (["--project"], {}, ["--project needs a value"]),
        (["--project", "p", "--regoin", "x"], {}, ["unknown option --regoin"]),
        (["--project", "p", "--concurrency", "lots"], {}, ["--concurrency", "lots"]),
        (["--project", "p"], {"MAX_INSTANCES": "-1"}, ["--max-instances"]),
    ],
)
def test_cloudrun_bad_settings_fail_in_one_line(bare_path, args, env, fragments):
    one_line_error(deploy(CLOUDRUN, "--dry-run", *args, env=env, path=bare_path), *fragments)


def test_cloudrun_without_gcloud_fails_clearly(bare_path):
    result = deploy(CLOUDRUN, "--project", "p", env={}, path=bare_path)
    one_line_error(result, "gcloud not found", "--dry-run")


def test_cloudrun_real_run_runs_exactly_what_the_dry_run_prints(bare_path, fake_gcloud):
    env = {"PROJECT": "p", "REGION": "asia-northeast1", "IMAGE_TAG": "f00d"}
    dry = deploy(CLOUDRUN, "--dry-run", env=env, path=bare_path)
    assert not fake_gcloud.exists()  # a dry run ran nothing, though a gcloud was on the PATH
    real = deploy(CLOUDRUN, env=env, path=bare_path)
    assert real.returncode == 0, real.stderr
    assert recorded(fake_gcloud) == commands(dry)
    hint = next(line for line in real.stderr.splitlines() if "curl" in line)
    assert "$(gcloud auth print-identity-token)" in hint and f"{FAKE_URL}/predictions/leafnet" in hint


def test_cloudrun_missing_image_stops_before_deploying(bare_path, fake_gcloud):
    result = deploy(CLOUDRUN, env={"PROJECT": "p", "IMAGE_TAG": "absent"}, path=bare_path)
    assert result.returncode != 0 and "image not found" in result.stderr
    assert [call[1:3] for call in recorded(fake_gcloud)] == [["artifacts", "docker"]]


@pytest.mark.parametrize("script", [CLOUDRUN, GCE], ids=["cloudrun", "gce"])
def test_help_is_the_header_and_lists_every_option(bare_path, script):
    result = deploy(script, "--help", env={}, path=bare_path)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: scripts/{script.name} [--dry-run]")
    options = re.findall(r"(--[a-z-]+):[A-Z_]+", script.read_text())
    assert len(options) >= 10
    for option in [*options, "--dry-run", "--help"]:
        assert option in result.stdout


def test_cloudrun_gpu_deploys_the_gpu_image_with_an_l4_and_cpu_always_allocated(bare_path):
    result = deploy(CLOUDRUN, "--dry-run", "--gpu", "1", env={"PROJECT": "p"}, path=bare_path)
    describe_image, run_deploy, _ = commands(result)
    image = "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve-gpu:main"  # docker/serve-gpu.Dockerfile's
    assert describe_image[5] == image
    deployed = flags(run_deploy)
    assert deployed["--image"] == image
    assert deployed["--gpu"] == "1" and deployed["--gpu-type"] == "nvidia-l4"
    assert deployed["--no-cpu-throttling"] is True  # Cloud Run attaches GPUs to always-allocated CPUs only
    assert deployed["--cpu"] == "4" and deployed["--memory"] == "16Gi"  # Cloud Run's minimum with an L4
    # TorchServe counts the GPU from CUDA_VISIBLE_DEVICES (else nvidia-smi) and gives it to its workers
    assert deployed["--update-env-vars"] == "CUDA_VISIBLE_DEVICES=0"
    assert "--no-gpu-zonal-redundancy" not in deployed
    # what does not change: the probe, the concurrency from the model config, IAM
    assert deployed["--concurrency"] == "16" and deployed["--no-allow-unauthenticated"] is True
    assert "warning" not in result.stderr  # the CPU image's one-worker-per-vCPU advice is not a GPU's
    assert "regions" in result.stderr and "docs/gpu.md" in result.stderr
    _, cpu_deploy, _ = commands(deploy(CLOUDRUN, "--dry-run", env={"PROJECT": "p"}, path=bare_path))
    assert not {"--gpu", "--gpu-type", "--no-cpu-throttling", "--update-env-vars"} & flags(cpu_deploy).keys()


def test_cloudrun_gpu_options_and_environment(bare_path):
    env = {"PROJECT": "p", "GPU": "1", "GPU_TYPE": "nvidia-rtx-pro-6000", "CPU": "20", "IMAGE_TAG": "cafe"}
    _, run_deploy, _ = commands(
        deploy(CLOUDRUN, "--dry-run", "--memory", "80Gi", "--no-gpu-zonal-redundancy", env=env, path=bare_path)
    )
    deployed = flags(run_deploy)
    assert deployed["--gpu-type"] == "nvidia-rtx-pro-6000"
    assert deployed["--cpu"] == "20" and deployed["--memory"] == "80Gi"
    assert deployed["--no-gpu-zonal-redundancy"] is True
    assert deployed["--image"] == "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve-gpu:cafe"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--gpu", "0"], ["--gpu must be at least 1"]),
        (["--gpu", "one"], ["--gpu must be a whole number", "one"]),
        (["--gpu-type", "nvidia-l4"], ["need --gpu N"]),
        (["--no-gpu-zonal-redundancy"], ["need --gpu N"]),
    ],
)
def test_cloudrun_bad_gpu_settings_fail_in_one_line(bare_path, args, fragments):
    one_line_error(deploy(CLOUDRUN, "--dry-run", "--project", "p", *args, env={}, path=bare_path), *fragments)


def test_cloudrun_gpu_real_run_runs_exactly_what_the_dry_run_prints(bare_path, fake_gcloud):
    env = {"PROJECT": "p", "REGION": "europe-west4", "GPU": "1"}
    dry = deploy(CLOUDRUN, "--dry-run", env=env, path=bare_path)
    real = deploy(CLOUDRUN, env=env, path=bare_path)
    assert real.returncode == 0, real.stderr
    assert recorded(fake_gcloud) == commands(dry)


# ---- Compute Engine ----

GCE_ENV = {"PROJECT": "p", "SOURCE_RANGES": "203.0.113.0/24,198.51.100.7/32"}


def test_gce_dry_run_creates_a_firewalled_cos_vm_running_the_serve_image(bare_path):
    describe_image, firewall, create, describe_vm = commands(deploy(GCE, "--dry-run", env=GCE_ENV, path=bare_path))
    image = "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve:main"
    assert describe_image[4:6] == ["describe", image]

    assert firewall[:5] == ["gcloud", "compute", "firewall-rules", "create", "leafnet-serve-8080"]
    rule = flags(firewall)
    assert rule["--rules"] == "tcp:8080" and rule["--direction"] == "INGRESS" and rule["--action"] == "ALLOW"
    assert rule["--source-ranges"] == GCE_ENV["SOURCE_RANGES"]

    assert create[:5] == ["gcloud", "compute", "instances", "create", "leafnet-serve"]
    vm = flags(create)
    assert vm["--project"] == "p" and vm["--zone"] == "us-central1-a"
    assert vm["--machine-type"] == "n2-standard-2"
    assert vm["--image-project"] == "cos-cloud" and vm["--image-family"] == "cos-stable"
    assert vm["--tags"] == rule["--target-tags"]  # the rule admits exactly this VM's tag
    assert vm["--network"] == rule["--network"] == "default"
    assert vm["--metadata-from-file"] == "user-data=config/gce/cloud-init.yaml"
    assert (REPO / vm["--metadata-from-file"].split("=", 1)[1]).is_file()
    assert f"leafnet-image={image}" in vm["--metadata"].split(",")
    assert "leafnet-token-secret=leafnet-serve-token" in vm["--metadata"].split(",")
    assert describe_vm[:5] == ["gcloud", "compute", "instances", "describe", "leafnet-serve"]


def test_gce_refuses_the_whole_internet_unless_told(bare_path):
    for ranges in ("0.0.0.0/0", "10.0.0.0/8,0.0.0.0/0"):
        env = {"PROJECT": "p", "SOURCE_RANGES": ranges}
        one_line_error(deploy(GCE, "--dry-run", env=env, path=bare_path), "0.0.0.0/0", "--allow-anywhere", "--domain")
        allowed = deploy(GCE, "--dry-run", "--allow-anywhere", env=env, path=bare_path)
        assert allowed.returncode == 0 and flags(commands(allowed)[1])["--source-ranges"] == ranges


def test_gce_domain_builds_an_https_load_balancer_with_a_managed_certificate(bare_path):
    result = deploy(GCE, "--dry-run", "--domain", "leaf.example.com", env={"PROJECT": "p"}, path=bare_path)
    assert result.returncode == 0, result.stderr
    listed = commands(result)
    firewall = flags(listed[1])
    assert firewall["--source-ranges"] == "130.211.0.0/22,35.191.0.0/16"  # Google's load balancers only
    verbs = [" ".join(command[2:4]) for command in listed]
    for verb in ("instance-groups unmanaged", "health-checks create", "backend-services create",
                 "backend-services add-backend", "url-maps create", "ssl-certificates create",
                 "target-https-proxies create", "addresses create", "forwarding-rules create"):  # fmt: skip
        assert verb in verbs, verb
    by_verb = {" ".join(command[2:4]): flags(command) for command in listed}
    assert by_verb["ssl-certificates create"]["--domains"] == "leaf.example.com"
    assert by_verb["health-checks create"]["--request-path"] == "/ping"  # open without a token
    assert by_verb["forwarding-rules create"]["--ports"] == "443"
    assert "https://leaf.example.com/predictions/leafnet" in result.stderr  # notes go to stderr


def test_gce_options_and_service_account(bare_path):
    _, create, _ = commands(
        deploy(
            GCE,
            "--dry-run",
            "--no-firewall",
            "--zone=europe-west4-b",
            "--machine-type",
            "c3-standard-4",
            "--service-account",
            "vm@p.iam.gserviceaccount.com",
            env={"PROJECT": "p"},
            path=bare_path,
        )
    )
    vm = flags(create)
    assert vm["--zone"] == "europe-west4-b" and vm["--machine-type"] == "c3-standard-4"
    # The registry's region follows the zone unless REGION says otherwise.
    assert "leafnet-image=europe-west4-docker.pkg.dev/p/leafnet/leafnet-serve:main" in vm["--metadata"]
    assert vm["--service-account"] == "vm@p.iam.gserviceaccount.com" and vm["--scopes"] == "cloud-platform"


def test_gce_update_switches_the_image_and_restarts(bare_path):
    describe_image, add_metadata, ssh, _ = commands(
        deploy(GCE, "--dry-run", "--update", "--image-tag", "beef", env={"PROJECT": "p"}, path=bare_path)
    )
    image = "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve:beef"
    assert describe_image[5] == image
    assert add_metadata[:5] == ["gcloud", "compute", "instances", "add-metadata", "leafnet-serve"]
    assert flags(add_metadata)["--metadata"] == f"leafnet-image={image}"
    assert ssh[:4] == ["gcloud", "compute", "ssh", "leafnet-serve"]
    assert flags(ssh)["--command"] == "sudo systemctl restart leafnet.service"


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        ([], {"SOURCE_RANGES": "10.0.0.0/8"}, ["PROJECT", "--project"]),
        ([], {"PROJECT": "p"}, ["SOURCE_RANGES", "--source-ranges"]),
        (["--source-ranges"], {"PROJECT": "p"}, ["--source-ranges needs a value"]),
        (["--firewall"], {"PROJECT": "p"}, ["unknown option --firewall"]),
    ],
)
def test_gce_bad_settings_fail_in_one_line(bare_path, args, env, fragments):
    one_line_error(deploy(GCE, "--dry-run", *args, env=env, path=bare_path), *fragments)


def test_gce_without_gcloud_fails_clearly(bare_path):
    one_line_error(deploy(GCE, env=GCE_ENV, path=bare_path), "gcloud not found")


def test_gce_real_run_runs_exactly_what_the_dry_run_prints(bare_path, fake_gcloud):
    dry = deploy(GCE, "--dry-run", env=GCE_ENV, path=bare_path)
    real = deploy(GCE, env=GCE_ENV, path=bare_path)
    assert real.returncode == 0, real.stderr
    assert recorded(fake_gcloud) == commands(dry)
    assert "gcloud secrets create leafnet-serve-token" in real.stderr
    assert f"http://{FAKE_IP}:8080/predictions/leafnet" in real.stderr


def test_gce_gpu_l4_is_a_g2_vm_with_the_driver_and_the_gpu_image(bare_path):
    result = deploy(GCE, "--dry-run", "--gpu-type", "nvidia-l4", env=GCE_ENV, path=bare_path)
    describe_image, _, create, _ = commands(result)
    image = "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve-gpu:main"
    assert describe_image[5] == image
    vm = flags(create)
    assert vm["--machine-type"] == "g2-standard-4"  # one L4: G2 machine types come with their GPUs
    assert "--accelerator" not in vm
    assert vm["--maintenance-policy"] == "TERMINATE"  # GPU VMs cannot live-migrate
    assert vm["--boot-disk-size"] == "50GB"
    assert vm["--image-family"] == "cos-stable"  # COS installs the driver itself (cloud-init's leafnet-gpu.service)
    metadata = vm["--metadata"].split(",")
    assert f"leafnet-image={image}" in metadata and "leafnet-gpu-driver=default" in metadata
    assert "nvidia-l4 quota" in result.stderr


def test_gce_gpu_attached_to_an_n1_vm(bare_path):
    args = ["--gpu-type", "nvidia-tesla-t4", "--gpu", "2", "--gpu-driver", "latest"]
    _, _, create, _ = commands(deploy(GCE, "--dry-run", *args, env=GCE_ENV, path=bare_path))
    vm = flags(create)
    assert vm["--machine-type"] == "n1-standard-4"
    assert vm["--accelerator"] == "type=nvidia-tesla-t4,count=2"
    assert vm["--maintenance-policy"] == "TERMINATE"
    assert "leafnet-gpu-driver=latest" in vm["--metadata"].split(",")
    env = {**GCE_ENV, "GPU_TYPE": "nvidia-tesla-t4", "MACHINE_TYPE": "n1-highmem-8", "BOOT_DISK_SIZE": "100GB"}
    _, _, create, _ = commands(deploy(GCE, "--dry-run", env=env, path=bare_path))
    vm = flags(create)
    assert vm["--machine-type"] == "n1-highmem-8" and vm["--boot-disk-size"] == "100GB"
    assert vm["--accelerator"] == "type=nvidia-tesla-t4,count=1"


def test_gce_cpu_vm_has_no_gpu_flags(bare_path):
    _, _, create, _ = commands(deploy(GCE, "--dry-run", env=GCE_ENV, path=bare_path))
    vm = flags(create)
    assert not {"--accelerator", "--maintenance-policy"} & vm.keys()
    assert not any(item.startswith("leafnet-gpu-driver=") for item in vm["--metadata"].split(","))


def test_gce_gpu_update_switches_to_the_gpu_image(bare_path):
    _, add_metadata, _, _ = commands(
        deploy(GCE, "--dry-run", "--update", "--gpu-type", "nvidia-l4", env={"PROJECT": "p"}, path=bare_path)
    )
    assert (
        flags(add_metadata)["--metadata"] == "leafnet-image=us-central1-docker.pkg.dev/p/leafnet/leafnet-serve-gpu:main"
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--gpu-type", "nvidia-l4", "--gpu", "2"], ["g2-standard-4 comes with its own GPUs", "--gpu"]),
        (["--gpu-type", "nvidia-a100-80gb", "--machine-type", "a2-ultragpu-1g", "--gpu", "1"], ["a2-ultragpu-1g"]),
        (["--gpu-type", "nvidia-tesla-t4", "--gpu", "two"], ["--gpu must be a whole number", "two"]),
        (["--gpu", "1"], ["need --gpu-type"]),
        (["--gpu-driver", "latest"], ["need --gpu-type"]),
    ],
)
def test_gce_bad_gpu_settings_fail_in_one_line(bare_path, args, fragments):
    one_line_error(deploy(GCE, "--dry-run", *args, env=GCE_ENV, path=bare_path), *fragments)


# ---- the VM's side: config/gce/cloud-init.yaml ----


def test_cloud_init_starts_the_service_at_boot():
    assert CLOUD_INIT.read_text().startswith("#cloud-config\n")
    config = yaml.safe_load(CLOUD_INIT.read_text())
    files = {entry["path"]: entry["content"] for entry in config["write_files"]}
    unit = files["/etc/systemd/system/leafnet.service"]
    assert "ExecStart=/bin/bash /etc/leafnet/run.sh" in unit and "Restart=always" in unit
    assert "ExecStartPre=/bin/bash /etc/leafnet/token.sh" in unit  # the token is there before the proxy starts
    assert "OnUnitActiveSec=5min" in files["/etc/systemd/system/leafnet-token.timer"]
    assert config["runcmd"] == [
        "systemctl daemon-reload", "systemctl start leafnet-token.timer", "systemctl start leafnet.service",
    ]  # fmt: skip


def cloud_init_files() -> dict[str, str]:
    return {entry["path"]: entry["content"] for entry in yaml.safe_load(CLOUD_INIT.read_text())["write_files"]}


def run_with_fakes(
    tmp_path, name: str, script: str, behaviour: dict[str, str]
) -> tuple[subprocess.CompletedProcess, list]:
    """Runs one of the VM's scripts with fake commands (`behaviour`: name -> bash body) that log their calls;
    the result and the calls, one list of words each."""
    fakes = tmp_path / "bin"
    fakes.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    record = f'{{ printf \'%s \' "$(basename "$0")" "$@"; printf \'\\n\'; }} >> {shlex.quote(str(log))}\n'
    for command, body in behaviour.items():
        (fakes / command).write_text(f"#!{BASH}\n{record}{body}")
        (fakes / command).chmod(0o755)
    (tmp_path / name).write_text(script)
    path = f"{fakes}:{os.path.dirname(shutil.which('basename'))}"
    result = subprocess.run([BASH, str(tmp_path / name)], env={"PATH": path}, capture_output=True, text=True)
    calls = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def start_server(tmp_path, image: str, devices: list[str] = ()) -> list[list[str]]:
    """run.sh with fakes of the metadata server, iptables and docker, and the NVIDIA device files `devices`
    (none: a CPU VM) in a folder of their own standing in for /dev; the calls it made."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for device in devices:
        (dev / device).touch()
    behaviour = {
        "curl": f'[[ "$*" == *"Metadata-Flavor: Google"*/attributes/leafnet-image ]] && echo {image}\n',
        "iptables": '[ "$2" != -C ]\n',  # the rule is not there yet: -C fails, so -A adds it
        "docker-credential-gcr": "",
        "install": "",  # would create /var/lib/leafnet/logs on the VM
        "docker": "",
    }
    script = cloud_init_files()["/etc/leafnet/run.sh"].replace("/dev/nvidia", f"{dev}/nvidia")
    result, calls = run_with_fakes(tmp_path, "run.sh", script, behaviour)
    assert result.returncode == 0, result.stderr
    return calls


def test_cloud_init_runs_the_metadata_image_with_the_gce_profile(tmp_path):
    """Runs the VM's start script with fakes of the metadata server, iptables and docker."""
    image = "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve:abc"
    calls = start_server(tmp_path, image)
    assert ["iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"] in calls
    assert ["docker-credential-gcr", "configure-docker", "--registries", "us-central1-docker.pkg.dev"] in calls
    assert ["install", "-d", "-m", "0755", "-o", "10001", "-g", "10001", "/var/lib/leafnet/logs"] in calls
    run = calls[-1]
    assert run[:2] == ["docker", "run"] and "--network" in run and run[run.index("--network") + 1] == "host"
    assert run[run.index("-v") + 1] == "/var/lib/leafnet/logs:/app/logs"  # TorchServe's logs outlive the container
    assert "/run/leafnet:/run/leafnet:ro" in run and "LEAFNET_TOKEN_FILE=/run/leafnet/token" in run
    assert "max-size=10m" in run and "max-file=5" in run  # the container's stdout rolls too
    assert "--device" not in run and "/usr/local/nvidia" not in " ".join(run)  # no driver here: a CPU VM
    # The arguments after the image replace the serve image's CMD, which is where it picks its profile.
    assert run[run.index(image) + 1 :] == [
        "--ts-config", "profiles/torchserve/gce.properties", "--proxy-config", "profiles/proxy/gce.Caddyfile",
    ]  # fmt: skip
    # ... paths in the image: the package's profile folders, where the serve image copies them
    assert (TORCHSERVE / "gce.properties").is_file() and (PROXY / "gce.Caddyfile").is_file()
    dockerfile = (REPO / "docker" / "serve.Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert cmd[0] == "--ts-config"
    assert "COPY leafnet/profiles/torchserve/ profiles/torchserve/" in dockerfile
    assert "COPY leafnet/profiles/proxy/ profiles/proxy/" in dockerfile


def test_cloud_init_gives_the_container_the_driver_and_every_gpu_on_a_gpu_vm(tmp_path):
    image = "us-central1-docker.pkg.dev/p/leafnet/leafnet-serve-gpu:abc"
    run = start_server(tmp_path, image, ["nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"])[-1]
    options = run[: run.index(image)]
    volumes = [options[i + 1] for i, word in enumerate(options) if word == "--volume"]
    # where the CUDA image's LD_LIBRARY_PATH and PATH look: libcuda and nvidia-smi (TorchServe counts GPUs with it)
    assert volumes == ["/var/lib/nvidia/lib64:/usr/local/nvidia/lib64", "/var/lib/nvidia/bin:/usr/local/nvidia/bin"]
    devices = [options[i + 1].split(":")[0].rsplit("/", 1)[1] for i, word in enumerate(options) if word == "--device"]
    assert devices == ["nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1"]  # each present device, none invented
    assert run[run.index(image) + 1 :][:2] == ["--ts-config", "profiles/torchserve/gce.properties"]


def test_cloud_init_installs_the_gpu_driver_before_the_server_starts():
    files = cloud_init_files()
    server = files["/etc/systemd/system/leafnet.service"]
    assert (
        "Requires=leafnet-gpu.service" in server and "leafnet-gpu.service" in server.split("After=")[1].split("\n")[0]
    )
    unit = files["/etc/systemd/system/leafnet-gpu.service"]
    assert "Type=oneshot" in unit and "RemainAfterExit=true" in unit  # once per boot, not per server restart
    assert "ExecStart=/bin/bash /etc/leafnet/gpu.sh" in unit


@pytest.mark.parametrize(("status", "installs", "code"), [(200, True, 0), (404, False, 0), (503, False, 1)])
def test_cloud_init_gpu_script_installs_the_metadata_driver_only_on_a_gpu_vm(tmp_path, status, installs, code):
    """gpu.sh with fakes of the metadata server, cos-extensions, mount and nvidia-smi: the driver named in
    leafnet-gpu-driver on a GPU VM; nothing without the key (a CPU VM); a failure when the server fails."""
    nvidia = tmp_path / "var" / "lib" / "nvidia"
    (nvidia / "bin").mkdir(parents=True)
    answer = "latest" if status == 200 else "not found"
    metadata = '[[ "$*" == *"Metadata-Flavor: Google"*/attributes/leafnet-gpu-driver* ]]'
    behaviour = {
        "curl": f'{metadata} && printf "{answer}\\n{status}"\n',
        "cos-extensions": "",
        "mount": "",
    }
    script = cloud_init_files()["/etc/leafnet/gpu.sh"].replace("/var/lib/nvidia", str(nvidia))
    (nvidia / "bin" / "nvidia-smi").write_text(f"#!{BASH}\necho 'GPU 0: NVIDIA L4' >> {tmp_path / 'smi.log'}\n")
    (nvidia / "bin" / "nvidia-smi").chmod(0o755)
    result, calls = run_with_fakes(tmp_path, "gpu.sh", script, behaviour)
    assert result.returncode == code, result.stderr
    installed = [call for call in calls if call[0] in ("cos-extensions", "mount")]  # curl's -w logs over 2 lines
    if installs:
        assert installed == [
            ["cos-extensions", "install", "gpu", "--", "-version=latest"],
            ["mount", "--bind", str(nvidia), str(nvidia)],
            ["mount", "-o", "remount,exec", str(nvidia)],  # COS mounts /var/lib noexec
        ]
        assert (tmp_path / "smi.log").read_text() == "GPU 0: NVIDIA L4\n"
    else:
        assert installed == [] and not (tmp_path / "smi.log").exists()
    if code:
        assert "503" in result.stderr


def run_token_script(tmp_path, secret_answer: str, status: int) -> subprocess.CompletedProcess:
    """token.sh with fakes of the metadata server and Secret Manager answering `status` and `secret_answer`."""
    files = {entry["path"]: entry["content"] for entry in yaml.safe_load(CLOUD_INIT.read_text())["write_files"]}
    script = files["/etc/leafnet/token.sh"].replace("/run/leafnet", str(tmp_path / "run"))
    (tmp_path / "answer.json").write_text(secret_answer)
    fakes = tmp_path / "bin"
    fakes.mkdir(exist_ok=True)
    (fakes / "curl").write_text(
        f"#!{BASH}\n"
        'case "$*" in\n'
        "  *leafnet-token-secret*) echo leafnet-serve-token ;;\n"
        "  *project-id*) echo p ;;\n"
        '  *service-accounts/default/token*) echo \'{"access_token": "ya29.x", "expires_in": 3599}\' ;;\n'
        "  *secretmanager.googleapis.com/v1/projects/p/secrets/leafnet-serve-token/versions/latest:access*)\n"
        '    while [ "$1" != -o ]; do shift; done\n'
        f'    cp {tmp_path / "answer.json"} "$2"; printf {status} ;;\n'
        "  *) exit 22 ;;\n"
        "esac\n"
    )
    (fakes / "curl").chmod(0o755)
    (tmp_path / "token.sh").write_text(script)
    env = {"PATH": f"{fakes}:/usr/bin:/bin"}
    return subprocess.run([BASH, str(tmp_path / "token.sh")], env=env, capture_output=True, text=True)


def test_cloud_init_token_script_writes_the_secret_atomically(tmp_path):
    """The secret's payload lands in the token file (the proxy reads it per request); no temp file is left."""
    payload = "a" * 64 + "\n" + "b" * 64
    encoded = base64.b64encode(payload.encode()).decode()
    result = run_token_script(
        tmp_path, f'{{\n  "name": "v/1",\n  "payload": {{\n    "data": "{encoded}"\n  }}\n}}\n', 200
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "token").read_text() == payload
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["token"]


@pytest.mark.parametrize(("status", "kept"), [(404, False), (400, False), (403, False), (503, True)])
def test_cloud_init_token_script_revokes_on_refusal_and_keeps_on_outage(tmp_path, status, kept):
    """A disabled, destroyed or forbidden secret empties the file (tokens taken away stop working); Secret
    Manager failing keeps the last good one."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "token").write_text("old" * 20)
    result = run_token_script(tmp_path, json.dumps({"error": {"code": status}}), status)
    assert (result.returncode != 0) == kept and str(status) in result.stderr  # a revocation is applied, not failed
    assert (tmp_path / "run" / "token").read_text() == ("old" * 20 if kept else "")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["token"]


def test_docs_show_what_the_dry_runs_print(bare_path):
    """docs/deploy.md quotes both scripts' dry runs, on CPUs and on GPUs; a change to the commands must show there
    too."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    cloudrun = deploy(CLOUDRUN, "--dry-run", "--project", "my-project", env={}, path=bare_path)
    gce = deploy(GCE, "--dry-run", "--project", "my-project", "--source-ranges=203.0.113.0/24", env={}, path=bare_path)
    gpu_image = "us-central1-docker.pkg.dev/my-project/leafnet/leafnet-serve-gpu:main"
    cloudrun_gpu = deploy(
        CLOUDRUN, "--dry-run", "--project", "my-project", "--region", "europe-west4", "--image", gpu_image,
        "--gpu", "1", env={}, path=bare_path,
    )  # fmt: skip
    gce_gpu = deploy(
        GCE, "--dry-run", "--project", "my-project", "--source-ranges=203.0.113.0/24", "--gpu-type", "nvidia-l4",
        env={}, path=bare_path,
    )  # fmt: skip
    for result in (cloudrun, gce, cloudrun_gpu, gce_gpu):
        assert result.returncode == 0 and result.stdout, result.stderr
        for line in result.stdout.splitlines():
            assert f"\n{line}\n" in docs, line
