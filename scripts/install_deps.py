"""Installs packages into the virtual environment whose Python runs this script: with uv, falling back to pip.

    .venv/bin/python scripts/install_deps.py -c requirements.lock -e '.[dev]'

The arguments are pip's. torch's CUDA build is gigabytes of wheels: unpacking and byte-compiling them one
file at a time was a third of a fresh `make demo` with pip; uv does both in parallel, and hard-links from
its cache on a second install (the README's timing of `make demo` has the figures). uv itself comes
through pip, pinned by requirements.lock (`make lock` writes it there, as it does every package in the venv).

uv reads neither pip's configuration files nor its PIP_* variables, so where pip is configured to install
from (its indexes, find-links, constraints, trusted hosts, certificate, timeout and proxy, as pip's own
option parser resolves them) is handed to uv as arguments, and both install the same packages from the
same places. pip installs instead, saying why, when a setting in force would change what gets installed
and uv is not told of it (--pre, --only-binary, --require-hashes, ...), or when uv cannot be had or fails.
It uses the standard library and pip only: it runs before anything else is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def pip_install_options():
    """pip's install options as pip itself resolves them from its configuration files and PIP_* variables
    (their precedence, empty values and all), or None when this pip's internals cannot be read."""
    try:
        from pip._internal.commands import create_command

        options, _ = create_command("install").parse_args([])
    except Exception:  # pip's internals are not its API: should they change, pip installs instead
        return None
    return options


def unsupported(options) -> list[str]:
    """The pip settings in force that change what gets installed and that this script does not hand to uv:
    any of them, and pip installs instead."""
    formats = getattr(options, "format_control", None)
    in_force = {
        "pre": getattr(options, "pre", False),
        "no-binary": bool(formats and formats.no_binary),
        "only-binary": bool(formats and formats.only_binary),
        "prefer-binary": getattr(options, "prefer_binary", False),
        "require-hashes": getattr(options, "require_hashes", False),
        "user": getattr(options, "use_user_site", False),
        "target": getattr(options, "target_dir", None),
        "prefix": getattr(options, "prefix_path", None),
        "root": getattr(options, "root_path", None),
        "no-deps": getattr(options, "ignore_dependencies", False),
        "no-build-isolation": not getattr(options, "build_isolation", True),
        "client-cert": getattr(options, "client_cert", None),
        "keyring-provider": getattr(options, "keyring_provider", "auto") not in ("auto", "disabled"),
    }
    return [name for name, value in in_force.items() if value]


def uv_arguments(options) -> tuple[list[str], dict[str, str]]:
    """Where pip installs from, as uv pip install arguments and environment variables."""
    arguments = ["--index-url", options.index_url]
    for flag, values in (
        ("--extra-index-url", options.extra_index_urls),
        ("--find-links", options.find_links),
        ("--constraint", options.constraints),
        ("--allow-insecure-host", options.trusted_hosts),
    ):
        for value in values or []:
            arguments += [flag, value]
    if options.no_index:
        arguments.append("--no-index")
    environment: dict[str, str] = {}
    if options.cert:
        environment["SSL_CERT_FILE"] = options.cert
    if options.timeout:
        environment["UV_HTTP_TIMEOUT"] = str(round(float(options.timeout)))
    if options.proxy:
        environment["HTTPS_PROXY"] = environment["HTTP_PROXY"] = options.proxy
    return arguments, environment


def _pip(*arguments: str, quiet: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *arguments]
    return subprocess.run(command, capture_output=quiet, text=True)


def install_with_uv(packages: list[str]) -> bool:
    """True when uv installed `packages`; False (having said why) when pip should instead."""
    options = pip_install_options()
    if options is None:
        print("install_deps: this pip's settings cannot be read; installing with pip", flush=True)
        return False
    if settings := unsupported(options):
        print(f"install_deps: pip is configured with {', '.join(settings)}; installing with pip", flush=True)
        return False
    got = _pip("install", "--quiet", "-c", str(LOCK), "uv")
    if got.returncode != 0:
        print(f"install_deps: uv could not be installed ({_last_line(got.stderr)}); installing with pip", flush=True)
        return False
    arguments, environment = uv_arguments(options)
    uv = Path(sys.executable).parent / "uv"
    command = [str(uv), "pip", "install", "--python", sys.executable, "--quiet", "--compile-bytecode"]
    # pip's rule across indexes: the best version wherever it is, not the first index that has the name.
    command += ["--index-strategy", "unsafe-best-match", *arguments, *packages]
    done = subprocess.run(command, env={**os.environ, **environment})
    if done.returncode != 0:
        print(f"install_deps: uv failed (exit {done.returncode}); installing with pip", flush=True)
        return False
    return True


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def main(packages: list[str]) -> int:
    if not packages:
        print("usage: python scripts/install_deps.py <pip install arguments>", file=sys.stderr)
        return 2
    if install_with_uv(packages):
        return 0
    _pip("install", "--quiet", "--upgrade", "pip", quiet=False)
    return _pip("install", "--quiet", *packages, quiet=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
