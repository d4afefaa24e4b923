import errno
import os
from pathlib import Path

import pytest

from leafnet.fsutil import atomic_directory, atomic_write_bytes


def test_atomic_directory_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("half-written")
        raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or retired copies left


def test_atomic_write_bytes_leaves_no_temp_file(tmp_path):
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert (tmp_path / "f.bin").read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert (tmp_path / "f.bin").stat().st_mode & 0o044 == 0o044  # readable by others, as with open()


def test_atomic_write_bytes_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """Without the first fsync a power cut can leave last.pt empty; without the second, the old file back."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def recording_replace(source, target):
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "sub" / "last.pt"
    atomic_write_bytes(target, b"weights")
    [(first, temp), replaced, synced_dir] = events
    assert first == "fsync" and Path(temp).parent == target.parent and Path(temp).name.startswith(".last.pt.")
    assert replaced == ("replace", str(target))
    assert synced_dir == ("fsync", str(target.parent))
    assert target.read_bytes() == b"weights"


def test_a_failure_mid_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_write_bytes(target, b"epoch 1")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="cannot flush to disk: Input/output error") as error:
        atomic_write_bytes(target, b"epoch 2, half-written")
    assert error.value.filename.startswith(str(tmp_path / ".last.pt."))  # the CLI prints it with the reason
    assert target.read_bytes() == b"epoch 1"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_directories_that_cannot_be_fsynced_are_tolerated(tmp_path, monkeypatch):
    """Some network filesystems refuse fsync on a directory (EINVAL): the file is written all the same."""
    real_fsync = os.fsync

    def fsync_files_only(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_files_only)
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert (tmp_path / "f.bin").read_bytes() == b"abc"
