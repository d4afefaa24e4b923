"""The images a `leafnet predict` command line names, as one ordered list of files, checked before any work.

Each INPUT is one of:
- an image file (any name: the decoder decides whether it is an image, and says why not);
- a folder: every file below it with an image extension (IMAGE_SUFFIXES), recursively, sorted, hidden
  files and folders left out;
- a `.txt` file: a list of paths, one a line, relative to the list's own folder (blank lines and lines
  starting with # are skipped); a listed folder counts as a folder, a listed .txt as an image file;
- `-`: such a list read from standard input, paths relative to the working directory.

A path that does not exist, named anywhere, is an error naming it (and the list and line it came from).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from leafnet.errors import LeafnetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
LIST_SUFFIX = ".txt"
STDIN = "-"


def collect_inputs(arguments: list[str], stdin: TextIO) -> list[Path]:
    """The image files the arguments name, in argument order."""
    files: list[Path] = []
    for argument in arguments:
        if argument == STDIN:
            files += _listed(stdin, Path(), "standard input")
            continue
        path = Path(argument)
        if not path.exists():
            raise LeafnetError(f"{path} not found")
        if path.is_file() and path.suffix.lower() == LIST_SUFFIX:
            try:
                with open(path, encoding="utf-8") as lines:
                    files += _listed(lines, path.parent, str(path))
            except (OSError, UnicodeDecodeError) as error:
                raise LeafnetError(f"cannot read the list {path}: {error}") from None
        else:
            files += _expanded(path)
    return files


def _listed(lines: Iterable[str], base: Path, where: str) -> list[Path]:
    files = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = base / entry
        if not path.exists():
            raise LeafnetError(f"{path} not found ({where}, line {number})")
        files += _expanded(path)
    return files


def _expanded(path: Path) -> list[Path]:
    """A file as it is; a folder's image files, recursively and sorted."""
    if not path.is_dir():
        return [path]
    return sorted(
        file
        for file in path.rglob("*")
        if file.suffix.lower() in IMAGE_SUFFIXES
        and file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )
