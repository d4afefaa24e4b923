"""scripts/install_deps.py hands pip's configuration to uv: the same indexes, links, constraints and
certificate, with pip's precedence (environment over the install section over [global])."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
install_deps = runpy.run_path(str(REPO / "scripts" / "install_deps.py"))
pip_settings, uv_arguments = install_deps["pip_settings"], install_deps["uv_arguments"]


def test_the_environment_overrides_the_install_section_which_overrides_global():
    listing = "\n".join(
        [
            "global.index-url='https://global.example/simple'",
            "install.index-url='https://install.example/simple'",
            ":env:.find-links='/wheels'",
            "global.find-links='/ignored'",
            "global.cert='/etc/ssl/certs/ca.crt'",
            "not a setting",
        ]
    )
    settings = pip_settings(listing)
    assert settings == {
        "index-url": "https://install.example/simple",
        "find-links": "/wheels",
        "cert": "/etc/ssl/certs/ca.crt",
    }


def test_lists_become_one_flag_per_value_and_the_rest_environment():
    settings = {
        "extra-index-url": "file:///a/simple file:///b/simple",
        "constraint": "/etc/pip/constraints.txt",
        "no-index": "true",
        "cert": "/ca.pem",
        "default-timeout": "180",
        "disable-pip-version-check": "1",  # nothing to do with where packages come from: not passed
    }
    arguments, environment = uv_arguments(settings)
    assert arguments == [
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
        "--constraint", "/etc/pip/constraints.txt", "--no-index",
    ]  # fmt: skip
    assert environment == {"SSL_CERT_FILE": "/ca.pem", "UV_HTTP_TIMEOUT": "180"}


def test_what_pip_itself_lists_is_read(tmp_path):
    """pip's own `config list` output, from a config file and a PIP_* variable, parses as pip means it."""
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nextra-index-url = file:///x/simple file:///y/simple\nfind-links = /from-file\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": str(config), "PIP_FIND_LINKS": "/from-env"}
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    settings = pip_settings(listing)
    assert settings["extra-index-url"] == "file:///x/simple file:///y/simple"
    assert settings["find-links"] == "/from-env"
