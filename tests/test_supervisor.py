"""leafnet/serving/supervisor.py's pieces that need no server: the profile it reads and the one it writes."""

from __future__ import annotations

import re
import shutil
from urllib.parse import unquote, urlparse

import pytest

from leafnet.profiles import TORCHSERVE
from leafnet.serving import supervisor


def test_properties_fill_variables_from_the_environment_as_torchserve_does(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFNET_TEST_PORT", "9123")
    profile = tmp_path / "p.properties"
    profile.write_text("# a comment\ninference_address=http://0.0.0.0:$$LEAFNET_TEST_PORT$$\n\nkey = spaced \n")
    assert supervisor.properties(profile) == {"inference_address": "http://0.0.0.0:9123", "key": "spaced"}
    assert supervisor.loopback_address("http://0.0.0.0:9123") == "127.0.0.1:9123"


@pytest.mark.parametrize("profile", ["config.properties", "gce.properties", "cloudrun.properties"])
def test_the_effective_config_pins_allowed_urls_to_the_store_and_workflows_to_an_empty_dir(tmp_path, profile):
    source = TORCHSERVE / profile
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
    # the files the profile ships with, by absolute path; everything else is the profile's own
    assert pinned["metrics_config"] == str(TORCHSERVE / "metrics.yaml")
    assert f"-Dlog4j.configurationFile={TORCHSERVE.as_uri()}/log4j2" in pinned["vmargs"]
    rest = {k: v for k, v in config.items() if k not in ("allowed_urls", "workflow_store", "metrics_config")}
    rest["vmargs"] = rest["vmargs"].replace("configurationFile=", f"configurationFile={TORCHSERVE.as_uri()}/")
    assert {k: v for k, v in pinned.items() if k in rest} == rest


def test_the_profiles_own_files_are_found_beside_it_whatever_the_current_directory(tmp_path, monkeypatch):
    """A profile copied elsewhere (a folder name with a space and a '#') names its metrics.yaml and
    log4j2.xml relative to itself: the effective copy has them by absolute path, the log4j file as a file:
    URI that stays one word when TorchServe splits vmargs at white space."""
    profile_dir = tmp_path / "my profiles #2"
    shutil.copytree(TORCHSERVE, profile_dir)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    profile = profile_dir / "config.properties"
    effective = supervisor.anchored_config(profile, str(tmp_path), supervisor.properties(profile), tmp_path / "s")
    pinned = supervisor.properties(effective)
    assert pinned["metrics_config"] == str(profile_dir / "metrics.yaml")
    (option,) = [word for word in pinned["vmargs"].split() if word.startswith("-Dlog4j.configurationFile=")]
    uri = urlparse(option.split("=", 1)[1])
    assert uri.scheme == "file" and unquote(uri.path) == str(profile_dir / "log4j2.xml")


def test_absolute_paths_uris_and_torchserves_variables_are_left_as_written(tmp_path):
    metrics = tmp_path / "m.yaml"
    metrics.write_text("{}")
    profile = tmp_path / "p.properties"
    text = (
        f"metrics_config={metrics}\n"
        "vmargs=-Xmx1g -Dlog4j2.configurationFile=classpath:log4j2.xml,$$LOG_CONFIG$$ -XX:+UseSerialGC\n"
        "# metrics_config=not/there.yaml\n"
    )
    assert supervisor.profile_files_anchored(text, profile) == text


def test_a_file_the_profile_names_that_is_not_there_fails_in_one_line(tmp_path):
    profile = tmp_path / "p.properties"
    for text in ("metrics_config=gone.yaml\n", "vmargs=-Xmx1g -Dlog4j.configurationFile=gone.xml\n"):
        with pytest.raises(SystemExit, match=r"^error: .*p\.properties names gone\.\w+, not found at /"):
            supervisor.profile_files_anchored(text, profile)


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
