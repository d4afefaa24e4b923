import builtins
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from leafnet.data.prepare import PrepareConfig, prepare
from leafnet.errors import LeafnetError
from tests.conftest import REPO, tiny_prepare_config

QUIET = {"log": lambda _: None}


def _png(color, size=(40, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png(seed: int, size=(40, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_synthetic_prepare_writes_the_contracted_artifacts(prepared_synthetic):
    root = prepared_synthetic
    manifest = _rows(root / "manifest.csv")
    assert list(manifest[0]) == ["path", "label", "split", "sha256", "width", "height", "source"]
    assert len(manifest) == 99 * 4
    for row in manifest:
        assert hashlib.sha256((root / row["path"]).read_bytes()).hexdigest() == row["sha256"]
        assert row["path"] == f"{row['split']}/{row['label']}/{Path(row['path']).name}"
        assert (row["width"], row["height"]) == ("48", "48")
    classes = json.loads((root / "classes.json").read_text())
    names = [classes[str(i)] for i in range(len(classes))]
    assert names == sorted(names) and len(names) == 99
    for split in ("train", "val", "test"):
        assert ImageFolder(root / split).classes == names  # any ImageFolder reader gets our indices
    stats = json.loads((root / "stats.json").read_text())
    assert stats["totals"] == {"train": 198, "val": 99, "test": 99, "rejected": 0}
    assert all(stats["counts"]["val"][name] == 1 for name in names)
    assert 0 < stats["mean"][0] < 0.5 and 0.2 < stats["std"][0] < 0.5  # white leaves on black
    assert _rows(root / "rejected.csv") == []


def test_rerun_is_skipped_and_a_rebuild_is_byte_identical(tmp_path, prepared_synthetic):
    raw = prepared_synthetic.parent / "raw"
    out = tmp_path / "again"
    logs: list[str] = []
    prepare(tiny_prepare_config(raw, out), log=logs.append)
    assert _tree_digest(out) == _tree_digest(prepared_synthetic)
    mtime = (out / "manifest.csv").stat().st_mtime_ns
    prepare(tiny_prepare_config(raw, out), log=logs.append)
    assert logs[-1].startswith("up to date") and (out / "manifest.csv").stat().st_mtime_ns == mtime
    prepare(tiny_prepare_config(raw, out, seed=1), log=logs.append)  # a changed parameter rebuilds
    assert _tree_digest(out)["manifest.csv"] != _tree_digest(prepared_synthetic)["manifest.csv"]


@pytest.fixture
def corrupted_kaggle(tmp_path) -> Path:
    root = tmp_path / "kaggle"
    images = root / "images"
    images.mkdir(parents=True)
    labels = []
    for i in range(1, 13):  # two good classes of six images each
        (images / f"{i}.png").write_bytes(_noise_png(i))
        labels.append((i, "Acer_Good" if i <= 6 else "Quercus_Good"))
    rgba = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
    rgba.save(images / "13.png")
    palette = Image.new("P", (40, 40), 3)
    palette.save(images / "14.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(images / "15.png")
    labels += [(13, "Acer_Good"), (14, "Acer_Good"), (15, "Quercus_Good")]
    (images / "16.jpg").write_bytes(b"")  # zero bytes
    (images / "17.jpg").write_text("this is not a jpeg")
    (images / "18.png").write_bytes(_noise_png(99)[:300])  # truncated
    (images / "19.png").write_bytes(_noise_png(1))  # same bytes as 1.png
    (images / "20.png").write_bytes(_noise_png(20))  # not in train.csv (a Kaggle test image)
    (images / ".DS_Store").write_bytes(b"\0\0")
    labels += [(16, "Acer_Good"), (17, "Acer_Good"), (18, "Quercus_Good"), (19, "Acer_Good"), (404, "Acer_Good")]
    with open(root / "train.csv", "w") as f:
        f.write("id,species,margin1\n" + "".join(f"{i},{s},0.1\n" for i, s in labels))
    return root


def test_kaggle_source_with_corrupted_files_rejects_each_with_its_reason(tmp_path, corrupted_kaggle):
    out = tmp_path / "out"
    logs: list[str] = []
    config = PrepareConfig(source="kaggle", input=str(corrupted_kaggle), output=str(out), size=32, workers=1)
    stats = prepare(config, log=logs.append)
    reasons = {row["file"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert reasons["images/16.jpg"] == "empty file"
    assert reasons["images/17.jpg"].startswith("not an image")
    assert reasons["images/18.png"].startswith("corrupt or truncated")
    assert reasons["images/19.png"] == "duplicate of images/1.png"
    assert reasons["images/20.png"] == "no label: id not in train.csv"
    assert reasons["images/404"].startswith("listed in train.csv")
    assert reasons["images/.DS_Store"] == "hidden file"
    assert len(reasons) == 7
    assert stats["totals"]["train"] + stats["totals"]["val"] + stats["totals"]["test"] == 15
    assert sum(line.startswith("rejected ") for line in logs) == 7  # and each was said on the console
    used = {row["source"] for row in _rows(out / "manifest.csv")}
    assert {"images/13.png", "images/14.png", "images/15.png"} <= used  # alpha, palette, 16-bit handled
    deep = np.asarray(
        Image.open(out / next(r["path"] for r in _rows(out / "manifest.csv") if r["source"] == "images/15.png"))
    )
    assert abs(int(deep[16, 16, 0]) - round(40000 / 257)) <= 2


def test_imagefolder_source_from_any_folder_per_class_tree(tmp_path):
    root = tmp_path / "Images"
    for c, name in enumerate(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]):
        (root / name / "nested").mkdir(parents=True)
        for i in range(5):
            (root / name / f"{name}_{i}.jpg").write_bytes(_noise_png(10 * c + i))
        (root / name / "nested" / "extra.png").write_bytes(_noise_png(100 + c))
    (root / "empty_class").mkdir()
    (root / "README.txt").write_text("not in a class folder")
    out = tmp_path / "dogs"
    stats = prepare(
        PrepareConfig(source="imagefolder", input=str(root), output=str(out), size=32, resize="shorter", workers=1),
        **QUIET,
    )
    assert stats["num_classes"] == 2 and sum(stats["totals"][s] for s in ("train", "val", "test")) == 12
    reasons = {row["file"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert reasons == {"README.txt": "not in a class folder", "empty_class/": "empty class folder"}


def test_small_class_fails_with_its_name_or_is_dropped_when_asked(tmp_path):
    root = tmp_path / "src"
    for c, (name, count) in enumerate((("big", 6), ("other", 6), ("tiny", 2))):
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(_noise_png(1000 + 10 * c + i))  # distinct: no duplicates
    config = PrepareConfig(source="imagefolder", input=str(root), output=str(tmp_path / "out"), size=32, workers=1)
    with pytest.raises(LeafnetError, match="class 'tiny' has 2 usable image"):
        prepare(config, **QUIET)
    assert not (tmp_path / "out").exists()
    config.small_classes = "drop"
    stats = prepare(config, **QUIET)
    assert stats["num_classes"] == 2 and stats["totals"]["rejected"] == 2


def test_failed_run_leaves_the_previous_output_untouched(tmp_path, corrupted_kaggle):
    out = tmp_path / "out"
    config = PrepareConfig(source="kaggle", input=str(corrupted_kaggle), output=str(out), size=32, workers=1)
    prepare(config, **QUIET)
    before = _tree_digest(out)
    (corrupted_kaggle / "train.csv").write_text("id,species\n1,OnlyClass\n")
    with pytest.raises(LeafnetError, match=r"class 'OnlyClass' has 1 usable image"):
        prepare(config, **QUIET)
    assert _tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "kaggle", "input": "/nonexistent/leaves"}, "input directory not found: /nonexistent/leaves"),
        ({"source": "imagefolder", "input": None}, "source=imagefolder needs input="),
        ({"source": "flickr"}, "unknown source 'flickr'"),
        ({"resize": "crop"}, "unknown resize 'crop'"),
        ({"size": 100_000}, "size must be between 16 and 4096"),
    ],
)
def test_bad_options_fail_with_a_clear_message(tmp_path, overrides, message):
    config = PrepareConfig(output=str(tmp_path / "out"), **overrides)
    with pytest.raises(LeafnetError, match=message):
        prepare(config, **QUIET)


def test_empty_directory_and_missing_csv(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeafnetError, match="no files found"):
        prepare(PrepareConfig(source="imagefolder", input=str(tmp_path / "empty"), output=str(tmp_path / "o")), **QUIET)
    (tmp_path / "k" / "images").mkdir(parents=True)
    with pytest.raises(LeafnetError, match=r"train\.csv"):
        prepare(PrepareConfig(source="kaggle", input=str(tmp_path / "k"), output=str(tmp_path / "o")), **QUIET)


@pytest.mark.integration
def test_cli_prints_one_line_and_exits_non_zero_on_bad_input(tmp_path):
    script = str(REPO / "scripts" / "prepare_data.py")
    for args, needle in (
        (["source=kaggle", "input=/nonexistent"], "error: input directory not found: /nonexistent"),
        (["sise=64"], "error: unknown config key 'sise'"),
        (["size=big"], "error: bad value for 'size'"),
    ):
        result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == needle or result.stderr.startswith(needle), result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "val_fraction: 0.15" in help_text.stdout


def _imagefolder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_output_never_replaces_the_input_or_a_folder_prepare_did_not_write(tmp_path):
    src = _imagefolder(
        tmp_path / "src", {f"{c}/{i}.png": _noise_png(i + 10 * k) for k, c in enumerate("ab") for i in range(4)}
    )
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("years of work")
    for output, message in (
        (src, "must not be the input"),
        (src / "out", "inside it"),
        (tmp_path / "thesis", "no prepare.json"),
    ):
        config = PrepareConfig(source="imagefolder", input=str(src), output=str(output), size=16, workers=1)
        with pytest.raises(LeafnetError, match=message):
            prepare(config, **QUIET)
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "years of work"
    assert len(list(src.rglob("*.png"))) == 8
    with pytest.raises(LeafnetError, match="not written by the generator"):
        prepare(PrepareConfig(source="synthetic", input=str(tmp_path / "thesis"), output=str(tmp_path / "o")), **QUIET)


def test_colliding_names_unusual_entries_and_bad_names_are_all_accounted_for(tmp_path):
    files = {f"a/{n}": _noise_png(i) for i, n in enumerate(["x.jpg", "x.png", "a_x_jpg.png", "p.png", "q.png"])}
    files |= {f"b/{i}.png": _noise_png(50 + i) for i in range(5)}
    src = _imagefolder(tmp_path / "src", files)
    (src / "b" / "link").symlink_to(tmp_path / "missing")
    os.mkfifo(src / "b" / "pipe")
    (tmp_path / "elsewhere").mkdir()
    (src / "b" / "folderlink").symlink_to(tmp_path / "elsewhere")
    (src / "b" / "caf\udce9.png").write_bytes(_noise_png(99))
    out = tmp_path / "out"
    prepare(PrepareConfig(source="imagefolder", input=str(src), output=str(out), size=16, workers=1), **QUIET)
    manifest = _rows(out / "manifest.csv")
    assert len({row["path"] for row in manifest}) == len(manifest) == 10  # no image overwrote another
    for row in manifest:
        assert hashlib.sha256((out / row["path"]).read_bytes()).hexdigest() == row["sha256"]
    reasons = {row["file"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert reasons["b/link"] == "dangling symlink" and reasons["b/pipe"] == "not a regular file"
    assert reasons["b/folderlink/"] == (
        f"symlinked folder resolves outside the input tree (to {tmp_path / 'elsewhere'}); not followed"
    )
    assert reasons["b/caf\\udce9.png"] == "file name is not valid UTF-8"
    assert (out.stat().st_mode & 0o055) == 0o055  # as readable as a folder made with mkdir


def test_unreadable_label_files_and_negative_numbers_are_clear_errors(tmp_path):
    root = tmp_path / "k"
    (root / "images").mkdir(parents=True)
    (root / "train.csv").write_bytes("id,species\n5,\xe9rable\n".encode("latin-1"))
    with pytest.raises(LeafnetError, match=r"cannot read .*train\.csv"):
        prepare(PrepareConfig(source="kaggle", input=str(root), output=str(tmp_path / "o")), **QUIET)
    with pytest.raises(LeafnetError, match="must not be negative"):
        prepare(PrepareConfig(seed=-1, output=str(tmp_path / "o")), **QUIET)


@pytest.mark.integration
def test_cli_reports_os_errors_in_one_line(tmp_path):
    script = str(REPO / "scripts" / "prepare_data.py")
    result = subprocess.run(
        [sys.executable, script, "source=imagefolder", f"input={tmp_path}", "output=/proc/leafnet-nope/out"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_a_damaged_stats_file_is_rebuilt_on_the_next_run(tmp_path):
    root = tmp_path / "src"
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            (root / name / f"{i}.png").write_bytes(_noise_png(2000 + 10 * c + i))
    config = PrepareConfig(source="imagefolder", input=str(root), output=str(tmp_path / "out"), size=32, workers=1)
    stats = prepare(config, **QUIET)
    (tmp_path / "out" / "stats.json").write_text("{ truncated")
    assert prepare(config, **QUIET) == stats
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def _two_classes(root: Path, seed: int = 3000) -> Path:
    """Classes a and b, six distinct images each: enough to split, so one more rejection never fails a run."""
    return _imagefolder(
        root, {f"{c}/{i}.png": _noise_png(seed + 10 * k + i) for k, c in enumerate("ab") for i in range(6)}
    )


def _imagefolder_config(src: Path, out: Path, **overrides) -> PrepareConfig:
    return PrepareConfig(source="imagefolder", input=str(src), output=str(out), size=16, workers=1, **overrides)


def test_symlinks_leading_out_of_the_tree_are_rejected_and_links_within_it_are_used(tmp_path):
    src = _two_classes(tmp_path / "src")
    outside = _imagefolder(tmp_path / "outside", {"secret.png": _noise_png(1)})
    _imagefolder(src, {".kept/inner.png": _noise_png(2)})  # a hidden folder: reachable only through the link
    (src / "a" / "inner_link.png").symlink_to(src / ".kept" / "inner.png")
    (src / "a" / "escape.png").symlink_to(outside / "secret.png")
    (src / "b" / "escape_dir").symlink_to(outside)
    (src / "b" / "loop").symlink_to(src)  # would never end if the walk followed folder links
    out = tmp_path / "out"
    stats = prepare(_imagefolder_config(src, out), **QUIET)
    reasons = {row["file"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert reasons["a/escape.png"] == f"symlink resolves outside the input tree (to {outside / 'secret.png'})"
    assert reasons["b/escape_dir/"] == f"symlinked folder resolves outside the input tree (to {outside}); not followed"
    assert reasons["b/loop/"] == "symlinked folder (not followed)"
    used = {row["source"] for row in _rows(out / "manifest.csv")}
    assert "a/inner_link.png" in used and not any("secret" in s or s.startswith("b/escape_dir") for s in used)
    assert stats["totals"]["rejected"] == len(reasons) == 4  # and the hidden folder


def test_a_file_over_max_file_mb_is_rejected_before_it_is_opened(tmp_path, monkeypatch):
    src = _imagefolder(
        tmp_path / "src", {f"{c}/{i}.png": _png((k, i, 7)) for k, c in enumerate("ab") for i in range(6)}
    )
    big = src / "a" / "big.png"
    big.write_bytes(_noise_png(5))  # ~5 kB of noise; the solid squares are a few hundred bytes
    opened = _count_opens(monkeypatch)
    out = tmp_path / "out"
    stats = prepare(_imagefolder_config(src, out, max_file_mb=0.002), **QUIET)
    reasons = {row["file"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert reasons == {"a/big.png": f"too large: {big.stat().st_size} bytes, over max_file_mb=0.002 (2000 bytes)"}
    assert opened.get(big.resolve(), 0) == 0 and stats["totals"]["rejected"] == 1
    with pytest.raises(LeafnetError, match="max_file_mb must be a positive number"):
        prepare(_imagefolder_config(src, out, max_file_mb=0), **QUIET)


def test_any_exception_while_decoding_one_file_becomes_its_rejected_row(tmp_path, monkeypatch):
    import leafnet.data.prepare as prepare_module

    src = _two_classes(tmp_path / "src")
    cursed = (src / "b" / "3.png").read_bytes()
    real_decode = prepare_module.decode_image

    def decode(data, *args, **kwargs):
        if data == cursed:
            raise RuntimeError("codec exploded\n  at frame 2")
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "decode_image", decode)
    out = tmp_path / "out"
    logs: list[str] = []
    stats = prepare(_imagefolder_config(src, out), log=logs.append)
    assert _rows(out / "rejected.csv") == [
        {"file": "b/3.png", "reason": "decoder error: RuntimeError: codec exploded at frame 2"}
    ]
    assert stats["totals"]["rejected"] == 1 and logs[-1].endswith(", 1 rejected")
    assert "rejected b/3.png: decoder error: RuntimeError: codec exploded at frame 2" in logs

    def out_of_memory(data, *args, **kwargs):
        raise MemoryError  # the machine's trouble, not the file's: the run must stop

    monkeypatch.setattr(prepare_module, "decode_image", out_of_memory)
    with pytest.raises(MemoryError):
        prepare(_imagefolder_config(src, tmp_path / "out2"), **QUIET)


def _count_opens(monkeypatch) -> dict[Path, int]:
    """Counts open() calls per resolved path, through builtins.open and io.open (which pathlib uses)."""
    opened: dict[Path, int] = {}
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            key = Path(file).resolve()
            opened[key] = opened.get(key, 0) + 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return opened


def test_each_input_file_is_read_once_and_a_rerun_still_sees_changed_content(tmp_path, monkeypatch):
    src = _two_classes(tmp_path / "src")
    opened = _count_opens(monkeypatch)
    out = tmp_path / "out"
    prepare(_imagefolder_config(src, out), **QUIET)
    inputs = sorted(p.resolve() for p in src.rglob("*.png"))
    assert {p: opened.get(p, 0) for p in inputs} == dict.fromkeys(inputs, 1)
    logs: list[str] = []
    prepare(_imagefolder_config(src, out), log=logs.append)
    assert logs[-1].startswith("up to date")
    (src / "a" / "0.png").write_bytes(_noise_png(4000))  # new content under the same name rebuilds
    prepare(_imagefolder_config(src, out), log=logs.append)
    assert logs[-1].startswith("prepare: wrote")
