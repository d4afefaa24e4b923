"""Glue for the thin scripts: usage text, logging, and one clean line plus exit status 2 for user errors.

Library modules report through `logging` (one logger per module, under "leafnet"); a script shows their
INFO messages on stdout as plain lines, only warnings with -q/--quiet, and debug detail, with the logger
names, with -v/--verbose.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from leafnet.config import annotated_yaml
from leafnet.errors import LeafnetError


def run(main: Callable[[list[str]], int | None], defaults: object, summary: str) -> None:
    """Runs `main(argv)`; `-h/--help` prints the summary and every option with its default and meaning."""
    argv = sys.argv[1:]
    quiet, verbose = ("-q" in argv or "--quiet" in argv), ("-v" in argv or "--verbose" in argv)
    argv = [arg for arg in argv if arg not in ("-q", "--quiet", "-v", "--verbose")]
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"{summary.strip()}\n")
        print("Options are key=value overrides (OmegaConf dotlist, e.g. optim.lr=0.01 or served=[onnx]);")
        print("--config FILE (repeatable) loads YAML first; -q shows only warnings, -v adds debug detail.")
        print("Every option, with the default a plain run uses:\n")
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


def run_command(module) -> None:
    """Runs a command module of leafnet.commands (its main, CONFIG and docstring) with sys.argv's options."""
    run(module.main, module.CONFIG(), module.__doc__)


def configure_logging(level: int) -> None:
    """leafnet's loggers to stdout at `level`: plain messages, or with level and logger name at DEBUG."""
    handler = _CurrentStdout()
    detailed = level <= logging.DEBUG
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if detailed else "%(message)s"))
    root = logging.getLogger("leafnet")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def logs_to_stderr() -> None:
    """leafnet's log lines to stderr from now on: for a command whose stdout carries data to pipe (a table)."""
    for handler in logging.getLogger("leafnet").handlers:
        if isinstance(handler, _CurrentStdout):
            handler.to_stderr = True


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout (or, after logs_to_stderr, sys.stderr) is when a record arrives (a test's
    capture may have replaced it)."""

    to_stderr = False

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr if self.to_stderr else sys.stdout
        super().emit(record)
