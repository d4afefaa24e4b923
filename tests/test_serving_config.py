"""The TorchServe and proxy profiles say what their comments promise: who can reach which API, with what
heap, and how much log each keeps."""

from __future__ import annotations

import re

import pytest

from leafnet.profiles import PROXY, TORCHSERVE

PROFILES = TORCHSERVE


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
    # anchored (the supervisor pins it to the real store's absolute path); the backslash doubled for .properties
    assert profile["allowed_urls"] == "file:///app/model_store/[^/]+\\\\.mar"
    assert profile["disable_system_metrics"] == "true"
    assert re.search(r"(^| )-Xmx\d+[mg] ", profile["vmargs"]), "an explicit heap"
    assert int(profile["max_request_size"]) == 10 * 1024 * 1024
    # named relative to the profile's own folder (the supervisor resolves it there)
    assert profile["metrics_mode"] == "prometheus" and (PROFILES / profile["metrics_config"]).is_file()
    assert profile["load_models"] == "leafnet=leafnet.mar"


def test_torchserve_listens_on_loopback_behind_the_proxy_in_every_profile():
    for name in ("config.properties", "gce.properties", "cloudrun.properties"):
        profile = properties(name)
        assert profile["inference_address"] == "http://127.0.0.1:8085"
        assert profile["disable_token_authorization"] == "true"  # the proxy (GCE) or Cloud Run's IAM checks callers
        assert "token_expiration_min" not in profile
    cloudrun = properties("cloudrun.properties")["vmargs"]
    assert "-Xmx384m" in cloudrun and "-XX:MaxDirectMemorySize=256m" in cloudrun  # of a 2 GiB instance


def test_every_proxy_profile_routes_through_the_shared_limits_and_bounds_its_logs():
    for name in ("local", "gce", "cloudrun"):
        text = (PROXY / f"{name}.Caddyfile").read_text()
        assert "import server-options.caddy" in text and "import leafnet_routes" in text
        if "output file" in text:
            assert text.count("output file") == text.count("roll_keep 5") == text.count("roll_size 20MiB")
        else:
            assert "output stdout" in text


def test_every_torchserve_log_file_rolls_by_size_into_a_bounded_count():
    """No date in the rolled names: DefaultRolloverStrategy's max then bounds the files of each log for
    good, not per day (log4j2.xml; log4j2-stdout.xml writes no file)."""
    text = (PROFILES / "log4j2.xml").read_text()
    appenders = re.findall(r"<RollingFile.*?</RollingFile>", text, re.S)
    assert len(appenders) == 5
    for appender in appenders:
        assert "%d{" not in re.search(r"filePattern=\"[^\"]*\"", appender).group(0)
        assert "TimeBasedTriggeringPolicy" not in appender
        assert re.search(r'SizeBasedTriggeringPolicy size="\d+ MB"', appender)
        assert re.search(r'DefaultRolloverStrategy max="\d+"', appender)
    assert "<Console" not in text  # stdout would land in an unbounded file or docker log
    assert "<RollingFile" not in (PROFILES / "log4j2-stdout.xml").read_text()
