"""scripts/install_deps.py hands where pip installs from to uv, as pip itself resolves its settings, and
leaves the install to pip when a setting in force would change what gets installed."""

import os
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
install_deps = runpy.run_path(str(REPO / "scripts" / "install_deps.py"))
pip_install_options = install_deps["pip_install_options"]
unsupported, uv_arguments = install_deps["unsupported"], install_deps["uv_arguments"]


@pytest.fixture
def pip_config(tmp_path, monkeypatch):
    """A pip configuration file of the test's own (PIP_CONFIG_FILE, loaded after the machine's), and no PIP_*
    variables but the ones a test sets."""
    for key in [key for key in os.environ if key.startswith("PIP_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "pip.conf"
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    return config


def test_pip_precedence_and_empty_values_are_pips_own(pip_config, monkeypatch):
    pip_config.write_text(
        "[global]\nfind-links = /from-file\nconstraint = /file-constraints.txt\n"
        "extra-index-url = file:///x/simple file:///y/simple\n[install]\ntimeout = 7\n"
    )
    monkeypatch.setenv("PIP_FIND_LINKS", "/from-env")  # the environment beats every file
    monkeypatch.setenv("PIP_CONSTRAINT", "")  # an empty variable is no setting, as pip reads it
    options = pip_install_options()
    arguments, environment = uv_arguments(options)
    pairs = list(zip(arguments[::2], arguments[1::2], strict=False))  # --no-index, a lone flag, comes last
    assert ("--find-links", "/from-env") in pairs and ("--find-links", "/from-file") not in pairs
    assert ("--constraint", "/file-constraints.txt") in pairs
    assert ("--extra-index-url", "file:///x/simple") in pairs and ("--extra-index-url", "file:///y/simple") in pairs
    assert environment["UV_HTTP_TIMEOUT"] == "7"
    assert unsupported(options) == []


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("PIP_PRE", "1", "pre"),
        ("PIP_ONLY_BINARY", ":all:", "only-binary"),
        ("PIP_REQUIRE_HASHES", "yes", "require-hashes"),
    ],
)
def test_a_setting_uv_is_not_told_of_leaves_the_install_to_pip(pip_config, monkeypatch, variable, value, setting):
    pip_config.write_text("")
    monkeypatch.setenv(variable, value)
    assert setting in unsupported(pip_install_options())


def test_every_source_becomes_one_flag_per_value_and_the_rest_environment():
    options = SimpleNamespace(
        index_url="https://pypi.org/simple",
        extra_index_urls=["file:///a/simple", "file:///b/simple"],
        find_links=["/wheels"],
        constraints=["/etc/pip/constraints.txt"],
        trusted_hosts=["mirror.local"],
        no_index=True,
        cert="/ca.pem",
        timeout=180.0,
        proxy="",
    )
    arguments, environment = uv_arguments(options)
    assert arguments == [
        "--index-url", "https://pypi.org/simple",
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
        "--find-links", "/wheels", "--constraint", "/etc/pip/constraints.txt",
        "--allow-insecure-host", "mirror.local", "--no-index",
    ]  # fmt: skip
    assert environment == {"SSL_CERT_FILE": "/ca.pem", "UV_HTTP_TIMEOUT": "180"}
