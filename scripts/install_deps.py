"""Installs packages into the virtual environment whose Python runs this script: with uv, falling back to pip.

    .venv/bin/python scripts/install_deps.py -c requirements.lock -e '.[dev]'

The arguments are pip's. torch's CUDA build is gigabytes of wheels: unpacking and byte-compiling them one
file at a time was a third of a fresh `make demo` with pip; uv does both in parallel, and hard-links from
its cache on a second install (the README's timing of `make demo` has the figures). uv itself comes
through pip, pinned by requirements.lock (`make lock` writes it there, as it does every package in the venv).

uv reads neither pip's configuration files nor its PIP_* variables, so what pip is configured to install
from (`pip config list`: its files and environment) is handed to uv as arguments, and both install the
same packages from the same places. If uv cannot be had or fails, pip installs instead, saying so.
This script uses the standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
# pip's sections, lowest precedence first: the install command's own section overrides [global], and the
# environment (PIP_*) overrides both files.
SECTIONS = ("global", "install", ":env:")
# pip option -> uv argument, one per value (values are whitespace-separated lists in pip's configuration)
LIST_OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
TRUE = {"1", "true", "yes", "on"}


def pip_settings(listing: str) -> dict[str, str]:
    """`pip config list` output (`section.key='value'` lines) -> key: value, the highest precedence winning."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not (sep and dot) or section not in SECTIONS:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        rank = SECTIONS.index(section)
        if key not in ranked or rank >= ranked[key][0]:
            ranked[key] = (rank, str(value))
    return {key: value for key, (_, value) in ranked.items()}


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """pip's settings as uv pip install arguments and environment variables."""
    arguments: list[str] = []
    for option, flag in LIST_OPTIONS.items():
        for value in settings.get(option, "").split():
            arguments += [flag, value]
    if settings.get("no-index", "").lower() in TRUE:
        arguments.append("--no-index")
    environment: dict[str, str] = {}
    if settings.get("cert"):
        environment["SSL_CERT_FILE"] = settings["cert"]
    timeout = settings.get("timeout") or settings.get("default-timeout")
    if timeout:
        environment["UV_HTTP_TIMEOUT"] = timeout
    if settings.get("proxy"):
        environment["HTTPS_PROXY"] = environment["HTTP_PROXY"] = settings["proxy"]
    return arguments, environment


def _pip(*arguments: str, quiet: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *arguments]
    return subprocess.run(command, capture_output=quiet, text=True)


def install_with_uv(packages: list[str]) -> bool:
    """True when uv installed `packages`; False (having said why) when pip should instead."""
    got = _pip("install", "--quiet", "-c", str(LOCK), "uv")
    if got.returncode != 0:
        print(f"install_deps: uv could not be installed ({_last_line(got.stderr)}); installing with pip", flush=True)
        return False
    listing = _pip("config", "list")
    arguments, environment = uv_arguments(pip_settings(listing.stdout if listing.returncode == 0 else ""))
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
