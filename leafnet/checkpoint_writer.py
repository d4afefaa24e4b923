"""Checkpoints written off the training loop's critical path.

`save()` copies the payload's tensors (the model keeps training in place, so the file must hold the
values of this moment) and hands the copy to one background thread, which serialises it once and
writes it atomically (`leafnet.checkpoint.save_checkpoint`'s format, fsynced). The same bytes then
become the other names asked for (best.pt beside last.pt) as hard links where the filesystem has them,
else as a second write of the same bytes: never a second serialisation. Files are written in the order
they were saved, at most one payload waits behind the one being written (memory stays bounded), the copy
goes into the tensors of the last payload written where they fit (memory already touched), and an error in
the thread is raised by the next `save()`, `flush()` or `close()`.

With `background=False` the same work happens inline, which is what a run measured "before" did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from leafnet.checkpoint import checkpoint_bytes
from leafnet.errors import LeafnetError
from leafnet.fsutil import atomic_write_bytes, fsync_directory

logger = logging.getLogger(__name__)


def detached_copy(value: Any, spare: Any = None) -> Any:
    """The payload with every tensor copied to the CPU (a GPU tensor's copy is also a transfer). Where `spare`
    (an earlier copy, already written) holds a CPU tensor of the same shape and dtype at the same place, the
    values go into it: memory already touched copies faster than new memory (docs/training.md)."""
    if isinstance(value, torch.Tensor):
        source = value.detach()
        if _fits(spare, source):
            return spare.copy_(source)
        return source.to("cpu", copy=True)
    if isinstance(value, dict):
        spares = spare if isinstance(spare, dict) else {}
        return {key: detached_copy(item, spares.get(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        spares = spare if isinstance(spare, list | tuple) and len(spare) == len(value) else [None] * len(value)
        return type(value)(detached_copy(item, old) for item, old in zip(value, spares, strict=True))
    return value


def _fits(spare: Any, source: torch.Tensor) -> bool:
    return (
        isinstance(spare, torch.Tensor)
        and spare.device.type == "cpu"
        and spare.shape == source.shape
        and spare.dtype == source.dtype
        and spare.layout == source.layout == torch.strided
    )


def link_or_write(source: Path, target: Path, data: bytes) -> None:
    """`target` becomes the file `source` is (a hard link, swapped in by a rename), or a copy of `data`
    where links fail (another filesystem, one without links)."""
    staging = target.with_name(f".{target.name}.link")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
        os.replace(staging, target)
        fsync_directory(target.parent)  # the new name survives a power cut, as atomic_write_bytes's do
    except OSError:
        staging.unlink(missing_ok=True)
        atomic_write_bytes(target, data)


def write_checkpoint(
    path: Path, payload: dict[str, Any], also: Sequence[Path] = (), remove: Sequence[Path] = ()
) -> None:
    """`path` first, then the files in `remove` go, then each of `also` becomes the same file: the order
    the trainer's crash-safety relies on (leafnet.train.Trainer._save)."""
    data = checkpoint_bytes(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    for stale in remove:
        stale.unlink(missing_ok=True)
    for other in also:
        other.parent.mkdir(parents=True, exist_ok=True)
        link_or_write(path, other, data)


class CheckpointWriter:
    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        # The last payload written, whose tensors the next save() copies into; one at most, so a run holds at most
        # three copies of its state (this one, one being written, one queued), the peak it had before.
        self._spare: queue.Queue = queue.Queue(maxsize=1)
        self._error: tuple[Path, BaseException] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._work, name="checkpoint-writer", daemon=True)
            self._thread.start()

    def save(
        self, path: str | Path, payload: dict[str, Any], also: Sequence[str | Path] = (), remove: Sequence[Path] = ()
    ) -> None:
        """Writes `payload` to `path`, deletes `remove`, and makes each of `also` the same file as `path`."""
        self._raise_error()
        path, also, remove = Path(path), [Path(p) for p in also], [Path(p) for p in remove]
        if not self.background:
            write_checkpoint(path, payload, also, remove)
            return
        try:
            spare = self._spare.get_nowait()
        except queue.Empty:
            spare = None
        self._jobs.put((path, detached_copy(payload, spare), also, remove))  # waits while one is already queued

    def flush(self, raise_error: bool = True) -> None:
        """Waits until every saved checkpoint is on disk (or failed: raised unless `raise_error` is False,
        for a caller already ending on another error)."""
        if self.background:
            self._jobs.join()
        self._raise_error(raise_error)

    def close(self, raise_error: bool = True) -> None:
        if self._thread is not None:
            self._jobs.join()
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        with contextlib.suppress(queue.Empty):
            self._spare.get_nowait()  # the run's memory goes back when its writer is done
        self._raise_error(raise_error)

    def _raise_error(self, raise_error: bool = True) -> None:
        """Raises the thread's failure, or only logs it (`raise_error` False: the caller is already ending on
        another error, which must stay the one reported)."""
        if self._error is not None:
            path, error = self._error
            self._error = None
            message = f"writing checkpoint {path} failed: {error}"
            if not raise_error:
                logger.error(message)
                return
            raise LeafnetError(message) from error

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                path, payload, also, remove = job
                if self._error is None:  # after a failure nothing more is written until it is raised
                    try:
                        write_checkpoint(path, payload, also, remove)
                    except BaseException as error:  # handed to the training thread
                        self._error = (path, error)
                with contextlib.suppress(queue.Full):  # its bytes are on disk: its memory may take the next copy
                    self._spare.put_nowait(payload)
            finally:
                self._jobs.task_done()
