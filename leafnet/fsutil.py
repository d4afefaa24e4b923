"""Filesystem helpers that never leave a half-written artifact behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def is_replaceable(target: Path, marker: str) -> bool:
    """Whether `atomic_directory` may replace `target`: it is absent, empty, or holds `marker`,
    the file its own writer leaves, so a folder someone else owns is never swapped away."""
    if not target.exists():
        return True
    return target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file())


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yields an empty staging directory that replaces `target` only if the block succeeds.

    Staging sits beside the target (same filesystem), so the swap is two renames; on any error the
    staging directory is removed and an existing target is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should read like mkdir's
    retired = None
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired / target.name, target)  # put the previous output back
                raise
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes a file through a temp file and a rename, so readers never see a partial file.

    Durable too: the bytes are fsynced before the rename and the directory after it. Without the first,
    a power cut can leave the new name pointing at an empty file (the rename reached the disk before the
    data); without the second, the rename itself can be lost and the old file come back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            _fsync(f.fileno(), tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: str | Path) -> None:
    """Makes the entries of `directory` (a rename into it) durable. A no-op where directories cannot be
    opened (Windows) or fsynced (some network filesystems answer EINVAL): there is nothing more to do."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(fd, directory, tolerate=(errno.EINVAL, errno.ENOTSUP))
    finally:
        os.close(fd)


def _fsync(fd: int, name: str | Path, tolerate: tuple[int, ...] = ()) -> None:
    """os.fsync, whose OSError names no file otherwise (the CLI prints the file with the reason)."""
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno in tolerate:
            return
        raise OSError(error.errno, f"cannot flush to disk: {error.strerror}", str(name)) from None


def write_json(path: str | Path, data) -> None:
    """Indented JSON with a trailing newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
