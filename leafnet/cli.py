"""Glue for the thin scripts: usage text, and one clean line plus exit status 2 for user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from leafnet.config import to_yaml
from leafnet.errors import LeafnetError


def run(main: Callable[[list[str]], int | None], defaults: object, summary: str) -> None:
    """Runs `main(argv)`; `-h/--help` prints the summary and the default config instead."""
    argv = sys.argv[1:]
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"{summary}\n\nOverrides are key=value (OmegaConf dotlist); --config FILE loads YAML.")
        print(f"Defaults:\n{to_yaml(defaults)}")
        sys.exit(0)
    try:
        sys.exit(main(argv) or 0)
    except LeafnetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # a path the user named: not writable, too long, a busy mount point
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
