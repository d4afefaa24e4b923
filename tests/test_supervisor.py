"""leafnet/serving/supervisor.py's pieces that need no server: the profile it reads and the one it writes."""

from __future__ import annotations

import re

import pytest

from leafnet.serving import supervisor
from tests.conftest import REPO


def test_properties_fill_variables_from_the_environment_as_torchserve_does(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFNET_TEST_PORT", "9123")
    profile = tmp_path / "p.properties"
    profile.write_text("# a comment\ninference_address=http://0.0.0.0:$$LEAFNET_TEST_PORT$$\n\nkey = spaced \n")
    assert supervisor.properties(profile) == {"inference_address": "http://0.0.0.0:9123", "key": "spaced"}
    assert supervisor.loopback_address("http://0.0.0.0:9123") == "127.0.0.1:9123"


@pytest.mark.parametrize("profile", ["config.properties", "gce.properties", "cloudrun.properties"])
def test_the_effective_config_pins_allowed_urls_to_the_store_and_workflows_to_an_empty_dir(tmp_path, profile):
    source = REPO / "config" / "torchserve" / profile
    store = tmp_path / "odd.store (1)"  # regex characters in the path stay literal
    store.mkdir()
    config = supervisor.properties(source)
    effective = supervisor.anchored_config(source, str(store), config, tmp_path / "state")
    text = effective.read_text()
    assert text.count("allowed_urls=") == 1 and text.count("workflow_store=") == 1
    pinned = supervisor.properties(effective)
    # .properties unescapes \\ to \ : what Java compiles is file://\Q<store>/\E[^/]+\.mar
    pattern = pinned["allowed_urls"].replace("\\\\", "\\")
    java_like = pattern.replace("\\Q", "").replace("\\E", "")  # for a literal path, \Q..\E is re.escape
    regex = re.escape(java_like.split("[^/]")[0]) + r"[^/]+\.mar"
    assert re.fullmatch(regex, f"file://{store}/leafnet.mar")
    for url in (f"file://{store}/../x.mar", f"file://{store}/sub/x.mar", f"file://{store}/x.war", "http://h/x.mar"):
        assert not re.fullmatch(regex, url), url
    assert list((tmp_path / "state" / "no-workflows").iterdir()) == []
    # everything else is the profile's own
    rest = {k: v for k, v in config.items() if k not in ("allowed_urls", "workflow_store")}
    assert {k: v for k, v in pinned.items() if k in rest} == rest


def test_grace_period_reads_caddys_durations():
    assert supervisor.grace_seconds("8s") == 8.0
    assert supervisor.grace_seconds("500ms") == 0.5
    assert supervisor.grace_seconds("1m") == 60.0


def test_bad_arguments_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        supervisor.parse(["--ts-config", str(tmp_path / "missing.properties"), "--proxy-config", "x"])
    assert exit_.value.code == 2 and "missing.properties not found" in capsys.readouterr().err


def test_grace_period_reads_compound_durations_and_refuses_nonsense():
    assert supervisor.grace_seconds("1m30s") == 90.0
    with pytest.raises(SystemExit, match="not a duration"):
        supervisor.grace_seconds("soon")
