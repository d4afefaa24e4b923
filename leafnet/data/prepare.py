"""Prepare: raw source → validated, resized, split ImageFolder tree with manifest and statistics.

Writes, under `output`: `{train,val,test}/<class>/<name>.png`, `manifest.csv`
(path,label,split,sha256,width,height,source), `classes.json` (index → name, sorted names, the same
indices torchvision's ImageFolder gives), `stats.json` (train mean/std, counts per class and split),
`rejected.csv` (file,reason for every file not used) and `prepare.json` (what the output was made
from). The whole tree is replaced atomically, and a run whose inputs and parameters match
`prepare.json` writes nothing.

Each input file is read once, at most `max_file_mb` of it: the bytes that are hashed for the
fingerprint and the duplicate check are the bytes decoded. Whatever goes wrong with one file (too big,
unreadable, not an image, a decoder exception) becomes its row in `rejected.csv`; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leafnet import __version__
from leafnet.data.prepared import RECORD, STATS, PreparedData
from leafnet.data.sources import Candidate, imagefolder_candidates, kaggle_candidates
from leafnet.data.species import SPECIES
from leafnet.data.split import SPLITS, min_class_size, stratified_split
from leafnet.data.synthetic import SyntheticConfig, generate_leaf_set
from leafnet.errors import LeafnetError
from leafnet.fsutil import atomic_directory, is_replaceable
from leafnet.process_pool import ordered_map
from leafnet.progress import progress_bar
from leafnet.serving.image_io import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    RejectedImage,
    decode_image,
    encode_png,
    fit_square,
)

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "kaggle", "imagefolder")
RESIZE_MODES = ("pad", "shorter", "stretch")
MAX_REJECTIONS_SHOWN = 20
MAX_SIZE = 4096  # output side; a typo like size=100000 would otherwise allocate 30 GB per image
MB = 1_000_000  # max_file_mb counts decimal megabytes, as file managers show sizes
MAX_REASON_CHARS = 300  # an exception message can quote a whole buffer; rejected.csv keeps one short line


@dataclass
class PrepareConfig:
    source: str = "synthetic"  # synthetic | kaggle | imagefolder
    input: str | None = None  # raw data; synthetic generates into data/raw/synthetic by default
    output: str = "data/processed/${source}"  # the prepared directory (replaced atomically)
    size: int = 128  # output images are size x size
    resize: str = "pad"  # pad (letterbox, keeps shape) | shorter (scale + centre crop) | stretch
    val_fraction: float = 0.15  # share of each class for validation
    test_fraction: float = 0.15  # share of each class for the test split
    seed: int = 0  # the stratified split is a function of this seed
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are rejected (decompression bombs)
    max_file_mb: float = 50.0  # larger files are rejected without being read (MB of 10^6 bytes)
    min_side: int = DEFAULT_MIN_SIDE  # smaller images are rejected
    background: list[int] = field(default_factory=lambda: [0, 0, 0])  # behind alpha and letterboxing
    small_classes: str = "fail"  # fail | drop: what to do with a class too small to split
    workers: int = 0  # decoding processes; 0 = one per CPU core
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise LeafnetError(f"unknown source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.source != "synthetic" and not self.input:
            raise LeafnetError(f"source={self.source} needs input=<path to the raw data>")
        if self.resize not in RESIZE_MODES:
            raise LeafnetError(f"unknown resize {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")
        if not 16 <= self.size <= MAX_SIZE:
            raise LeafnetError(f"size must be between 16 and {MAX_SIZE}, got {self.size}")
        if not (
            0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise LeafnetError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        if not (math.isfinite(self.max_file_mb) and self.max_file_mb > 0):
            raise LeafnetError(f"max_file_mb must be a positive number, got {self.max_file_mb}")
        if self.seed < 0 or self.workers < 0:
            raise LeafnetError("seed and workers must not be negative")
        if self.small_classes not in ("fail", "drop"):
            raise LeafnetError(f"small_classes must be fail or drop, got {self.small_classes!r}")
        if len(self.background) != 3 or not all(0 <= v <= 255 for v in self.background):
            raise LeafnetError(f"background must be three values in 0..255, got {self.background}")

    def input_dir(self) -> Path:
        return Path(self.input or "data/raw/synthetic")


@dataclass
class _Decoded:
    png: bytes | None
    source_sha256: str | None
    reason: str | None
    width: int = 0
    height: int = 0
    channel_sum: tuple[float, ...] = ()
    channel_sqsum: tuple[float, ...] = ()


class _Refused(Exception):  # noqa: N818 (a reason, not a failure of the run)
    """A file refused before decoding; the message is its reason for rejected.csv."""


def _read_capped(path: Path, config: PrepareConfig) -> bytes:
    """The file's bytes, refused by size before it is opened. The read stops one byte past the cap, so
    a file that grows after the stat still cannot be read whole into memory."""
    limit = int(config.max_file_mb * MB)
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise _Refused(f"too large: {size} bytes, over max_file_mb={config.max_file_mb} ({limit} bytes)")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as error:
        raise _Refused(f"unreadable: {error.strerror or error}") from None
    if len(data) > limit:
        raise _Refused(f"too large: grew past max_file_mb={config.max_file_mb} ({limit} bytes) while being read")
    return data


def _convert(data: bytes, source_sha: str, config: PrepareConfig) -> _Decoded:
    """Validates, converts and resizes one file's bytes (decoded from memory: the file is not reopened)."""
    background = tuple(config.background)
    image = decode_image(data, config.max_pixels, config.min_side, background)
    image = fit_square(image, config.size, config.resize, background)
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    return _Decoded(
        encode_png(image),
        source_sha,
        None,
        image.width,
        image.height,
        tuple(pixels.sum(axis=(0, 1))),
        tuple((pixels**2).sum(axis=(0, 1))),
    )


def _one_line(text: str) -> str:
    """A reason fit for one rejected.csv row and one log line, whatever the exception said."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", text).strip()
    text = text.encode("utf-8", "backslashreplace").decode()  # rejected.csv is UTF-8; names may not be
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _reason(error: Exception) -> str:
    if isinstance(error, (_Refused, RejectedImage)):
        return _one_line(str(error))
    # Not an error the decoder translates (a PIL or numpy bug, an exotic codec): it costs this file, not the run.
    return _one_line(f"decoder error: {type(error).__name__}: {error}")


def _decode_one(job: tuple[Path, PrepareConfig]) -> _Decoded:
    """Worker: read, validate, convert and resize one file (runs in a subprocess when there are many)."""
    path, config = job
    source_sha = None
    try:
        data = _read_capped(path, config)
        source_sha = hashlib.sha256(data).hexdigest()
        return _convert(data, source_sha, config)
    except MemoryError:
        raise  # the machine ran out, not the file: every later file would fail the same way
    except Exception as error:  # KeyboardInterrupt and SystemExit are not Exceptions: they still stop the run
        return _Decoded(None, source_sha, _reason(error))


def _decode_all(candidates: list[Candidate], config: PrepareConfig) -> list[_Decoded]:
    jobs = [(c.path, config) for c in candidates if c.reason is None]
    results = ordered_map(_decode_one, jobs, config.workers)
    decoded = list(progress_bar(results, total=len(jobs), desc="prepare", unit="img"))
    results, it = [], iter(decoded)
    for candidate in candidates:
        results.append(next(it) if candidate.reason is None else _Decoded(None, None, candidate.reason))
    return results


def _inputs_fingerprint(config: PrepareConfig, candidates: list[Candidate], decoded: list[_Decoded]) -> str:
    """Hash of the parameters that shape the output and of every candidate: its content hash as the
    decoding pass read it (so the record names exactly the bytes used, and no file is read a second
    time to compute it), or the reason it could not be read (which names an oversized file's size)."""
    digest = hashlib.sha256(json.dumps(_output_params(config), sort_keys=True).encode())
    for candidate, result in zip(candidates, decoded, strict=True):
        digest.update(f"{candidate.source}\0{candidate.label}\0{candidate.reason}\0".encode())
        if candidate.reason is None:
            digest.update(f"{result.source_sha256 or result.reason}\0".encode())
    return digest.hexdigest()


def _output_params(config: PrepareConfig) -> dict:
    params = asdict(config)
    params.pop("workers")  # how fast, not what
    params.pop("output")
    params["input"] = None if config.source == "synthetic" else params["input"]
    if config.source != "synthetic":
        params.pop("synthetic")
    return params


def _unusable_label(label: str) -> bool:
    return label in (".", "..") or any(ch in label for ch in "/\\\0")


def _output_names(sources: list[str], labels: list[str]) -> list[str]:
    """File name per image: the source stem, plus a hash of the source path where stems collide
    within a class (x.jpg and x.png). A collision that remains is an error, never an overwrite."""
    stems = [Path(s).stem for s in sources]
    counts = Counter(zip(labels, stems, strict=True))
    names = []
    for source, label, stem in zip(sources, labels, stems, strict=True):
        tag = "" if counts[(label, stem)] == 1 else "_" + hashlib.sha256(source.encode()).hexdigest()[:10]
        names.append(f"{stem}{tag}.png")
    clashes = [k for k, n in Counter(zip(labels, names, strict=True)).items() if n > 1]
    if clashes:
        raise LeafnetError(f"two images of class {clashes[0][0]!r} would both be written as {clashes[0][1]}")
    return names


def _check_output_location(root: Path, out: Path) -> None:
    """Refuses outputs that would replace the input or a folder prepare did not write."""
    root_abs, out_abs = root.resolve(), out.resolve()
    if out_abs == root_abs or root_abs in out_abs.parents or out_abs in root_abs.parents:
        raise LeafnetError(f"output={out} must not be the input directory {root}, inside it, or around it")
    if not is_replaceable(out, RECORD):
        raise LeafnetError(
            f"output={out} exists and is not a prepared data directory (no prepare.json); "
            "choose a new output or remove it yourself"
        )


@dataclass
class _Accepted:
    candidate: Candidate
    decoded: _Decoded
    split: str = ""
    path: str = ""


def _screen(candidates: list[Candidate], decoded: list[_Decoded], config: PrepareConfig):
    """Applies label, duplicate and class-size rules; returns accepted images and (file, reason) rows."""
    rejected: list[tuple[str, str]] = []
    accepted: list[_Accepted] = []
    first_seen: dict[str, str] = {}
    for candidate, result in zip(candidates, decoded, strict=True):
        reason = result.reason
        if reason is None and _unusable_label(candidate.label):
            reason = f"label {candidate.label!r} is not usable as a folder name"
        if reason is None and result.source_sha256 in first_seen:
            reason = f"duplicate of {first_seen[result.source_sha256]}"
        if reason is not None:
            rejected.append((candidate.source, reason))
            continue
        first_seen[result.source_sha256] = candidate.source
        accepted.append(_Accepted(candidate, result))

    needed = min_class_size(config.val_fraction, config.test_fraction)
    sizes = Counter(a.candidate.label for a in accepted)
    small = sorted(label for label, n in sizes.items() if n < needed)
    if small and config.small_classes == "fail":
        label = small[0]
        others = f" (and {len(small) - 1} more)" if len(small) > 1 else ""
        raise LeafnetError(
            f"class {label!r}{others} has {sizes[label]} usable image(s) but the train/val/test split needs "
            f"{needed}; add images, lower val_fraction/test_fraction, or set small_classes=drop"
        )
    for item in [a for a in accepted if a.candidate.label in small]:
        reason = f"class too small to split ({sizes[item.candidate.label]} < {needed} images)"
        rejected.append((item.candidate.source, reason))
    accepted = [a for a in accepted if a.candidate.label not in small]
    return accepted, sorted(rejected)


def _report_rejections(rejected: list[tuple[str, str]], log: Callable[[str], None]) -> None:
    for source, reason in rejected[:MAX_REJECTIONS_SHOWN]:
        log(f"rejected {source}: {reason}")
    if len(rejected) > MAX_REJECTIONS_SHOWN:
        log(f"... and {len(rejected) - MAX_REJECTIONS_SHOWN} more (all listed in rejected.csv)")


def _stats(accepted: list[_Accepted], classes: list[str], config: PrepareConfig, rejected: int) -> dict:
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    counts = {split: dict.fromkeys(classes, 0) for split in SPLITS}
    for item in accepted:
        counts[item.split][item.candidate.label] += 1
        if item.split == "train":
            total += item.decoded.channel_sum
            total_sq += item.decoded.channel_sqsum
            pixels += item.decoded.width * item.decoded.height
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    return {
        "source": config.source,
        "image_size": config.size,
        "resize": config.resize,
        "background": list(config.background),
        "num_classes": len(classes),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "totals": {**{split: sum(counts[split].values()) for split in SPLITS}, "rejected": rejected},
        "counts": counts,
    }


def _write_output(out: Path, accepted, classes, stats, rejected, record) -> None:
    with atomic_directory(out) as staging:
        rows = []
        for item in sorted(accepted, key=lambda a: a.path):
            target = staging / item.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.decoded.png)
            sha = hashlib.sha256(item.decoded.png).hexdigest()
            d = item.decoded
            rows.append([item.path, item.candidate.label, item.split, sha, d.width, d.height, item.candidate.source])
        PreparedData.write(staging, rows, rejected, classes, stats, record)


def list_candidates(config: PrepareConfig) -> list[Candidate]:
    root = config.input_dir()
    if config.source == "imagefolder":
        return imagefolder_candidates(root)
    return kaggle_candidates(root)


def prepare(config: PrepareConfig, log: Callable[[str], None] = logger.info) -> dict:
    """Runs the whole stage and returns the stats written to stats.json."""
    config.validate()
    root, out = config.input_dir(), Path(config.output)
    _check_output_location(root, out)
    if config.source == "synthetic":
        log(f"synthetic leaves: {len(SPECIES)} species x {config.synthetic.per_species} images -> {root}")
        generate_leaf_set(
            root,
            config.synthetic,
            progress=lambda items: progress_bar(items, desc="generate", unit="img"),
            workers=config.workers,
        )
    candidates = list_candidates(config)
    if not candidates:
        raise LeafnetError(f"no files found in {root}")
    settings = f"source={config.source}, size={config.size}, resize={config.resize}"
    log(f"prepare: {len(candidates)} files from {root} ({settings})")
    decoded = _decode_all(candidates, config)
    fingerprint = _inputs_fingerprint(config, candidates, decoded)
    record = {"inputs_sha256": fingerprint, "params": _output_params(config), "leafnet_version": __version__}
    previous = PreparedData(out)
    if previous.record() == record and (out / STATS).is_file():
        try:
            stats = previous.stats()
            log(f"up to date: {out} (same inputs and parameters)")
            return stats
        except LeafnetError:
            pass  # a damaged stats.json only means we rebuild, as a damaged record does
    accepted, rejected = _screen(candidates, decoded, config)
    _report_rejections(rejected, log)
    classes = sorted({a.candidate.label for a in accepted})
    if len(classes) < 2:
        raise LeafnetError(
            f"only {len(accepted)} usable image(s) in {len(classes)} class(es) under {root} "
            f"({len(rejected)} rejected); a classifier needs at least 2 classes"
        )
    labels = [a.candidate.label for a in accepted]
    splits = stratified_split(labels, config.val_fraction, config.test_fraction, config.seed)
    names = _output_names([a.candidate.source for a in accepted], labels)
    for item, split, name in zip(accepted, splits, names, strict=True):
        item.split, item.path = split, f"{split}/{item.candidate.label}/{name}"
    stats = _stats(accepted, classes, config, len(rejected))
    _write_output(out, accepted, classes, stats, rejected, record)
    totals = stats["totals"]
    log(
        f"prepare: wrote {out}: {len(classes)} classes, train {totals['train']} / val {totals['val']} / "
        f"test {totals['test']}, {len(rejected)} rejected"
    )
    return stats
