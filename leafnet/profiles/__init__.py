"""The serving profiles leafnet carries, found through the installed package (importlib.resources), so
`leafnet serve` works from a wheel as from a checkout.

- torchserve/: TorchServe's properties, one file per profile, and what they name (metrics.yaml,
  log4j2.xml, log4j2-stdout.xml).
- proxy/: the Caddy proxy's Caddyfile per profile and the snippets they import (leafnet.caddy, the routes
  and limits; server-options.caddy, the global options).

Paths inside these files are relative to the file that names them, never to the current directory: the
supervisor (leafnet/serving/supervisor.py) resolves the properties' metrics_config and log4j
configurationFile against the properties' folder, and Caddy resolves `import` against the importing
Caddyfile. The serve image copies both folders and runs the supervisor on them the same way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from leafnet.errors import LeafnetError

_ROOT = Path(str(resources.files(__name__)))
TORCHSERVE = _ROOT / "torchserve"
PROXY = _ROOT / "proxy"

# profile -> (TorchServe properties, Caddyfile): where it runs and who may call it (docs/serving.md)
PROFILES = {
    "local": ("config.properties", "local.Caddyfile"),  # this machine, loopback only
    "gce": ("gce.properties", "gce.Caddyfile"),  # a Compute Engine VM, bearer token
    "cloudrun": ("cloudrun.properties", "cloudrun.Caddyfile"),  # Cloud Run, IAM in front
}


def profile_files(name: str) -> tuple[Path, Path]:
    """(TorchServe properties, Caddyfile) of profile `name`."""
    if name not in PROFILES:
        raise LeafnetError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    properties, caddyfile = PROFILES[name]
    return TORCHSERVE / properties, PROXY / caddyfile
