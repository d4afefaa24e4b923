"""Glue for the thin scripts: usage text, and one clean line plus exit status 2 for user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from leafnet.config import annotated_yaml
from leafnet.errors import LeafnetError


def run(main: Callable[[list[str]], int | None], defaults: object, summary: str) -> None:
    """Runs `main(argv)`; `-h/--help` prints the summary and every option with its default and meaning."""
    argv = sys.argv[1:]
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"{summary.strip()}\n")
        print("Options are key=value overrides (OmegaConf dotlist, e.g. optim.lr=0.01 or served=[onnx]);")
        print("--config FILE (repeatable) loads YAML first. Every option, with the default a plain run uses:\n")
        print(annotated_yaml(defaults), end="")
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
