"""The TorchServe profiles say what their comments promise: who can reach which API, and with what key."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

PROFILES = REPO / "config" / "torchserve"


def properties(name: str) -> dict[str, str]:
    lines = (PROFILES / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.mark.parametrize("name", ["config.properties", "gce.properties", "cloudrun.properties"])
def test_every_profile_locks_down_what_no_client_needs(name):
    profile = properties(name)
    assert profile["management_address"].startswith("http://127.0.0.1:")
    assert profile["metrics_address"].startswith("http://127.0.0.1:")
    assert profile["grpc_inference_address"] == profile["grpc_management_address"] == "127.0.0.1"
    assert profile["enable_model_api"] == "false"
    assert profile["allowed_urls"] == "file://.*model_store.*"
    assert int(profile["max_request_size"]) == 10 * 1024 * 1024
    assert profile["metrics_mode"] == "prometheus" and (REPO / profile["metrics_config"]).is_file()
    assert profile["load_models"] == "leafnet=leafnet.mar"


def test_each_profile_opens_inference_as_documented():
    local, gce, cloudrun = (properties(n) for n in ("config.properties", "gce.properties", "cloudrun.properties"))
    assert local["inference_address"] == "http://127.0.0.1:8080" and local["disable_token_authorization"] == "true"
    assert gce["inference_address"] == "http://0.0.0.0:8080" and gce["disable_token_authorization"] == "false"
    assert int(gce["token_expiration_min"]) > 60
    assert cloudrun["inference_address"] == "http://0.0.0.0:$$PORT$$"
    assert cloudrun["disable_token_authorization"] == "true"  # Cloud Run's IAM checks callers instead
