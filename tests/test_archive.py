"""torch-model-archiver as leafnet runs it (leafnet/export/archive.py)."""

from __future__ import annotations

import tempfile
import zipfile

import pytest

from leafnet.export.archive import build_archive

pytest.importorskip("model_archiver")


def test_an_archive_is_staged_in_a_temp_dir_of_its_own(tmp_path, monkeypatch):
    # The archiver stages files in <temp dir>/<model name>: a second packing of the same name at that moment
    # (another export, a parallel test) owns that path. Here a file holds it, which the archiver cannot remove.
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    (shared / "leafnet").write_text("another archiver's staging area")
    monkeypatch.setenv("TMPDIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    files = tmp_path / "files"
    files.mkdir()
    for name in ("model.pt", "handler.py", "model-config.yaml", "extra.json"):
        (files / name).write_text("{}\n" if name.endswith((".json", ".yaml")) else "# \n")
    out = tmp_path / "out"
    out.mkdir()
    archive = build_archive(
        "leafnet",
        "1.0",
        files / "model.pt",
        files / "handler.py",
        [files / "extra.json"],
        files / "model-config.yaml",
        out,
    )
    with zipfile.ZipFile(archive) as packed:
        assert {"model.pt", "handler.py", "extra.json", "MAR-INF/MANIFEST.json"} <= set(packed.namelist())
    assert (shared / "leafnet").read_text() == "another archiver's staging area"
    assert sorted(p.name for p in shared.iterdir()) == ["leafnet"]  # the private temp dir is gone
