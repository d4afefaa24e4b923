"""PreparedData(root): the one reader and writer of the prepared layout that prepare produces.

    {train,val,test}/<class>/<name>.png   the images (an ImageFolder tree any tool reads)
    manifest.csv    path,label,split,sha256,width,height,source for every image
    classes.json    class index -> name (sorted names: torchvision ImageFolder's indices)
    stats.json      the train split's per-channel mean/std, prepare's size, resize mode and background,
                    counts per class and split
    rejected.csv    file,reason for every input not used
    prepare.json    the inputs' content hash and prepare's parameters (a re-run with both unchanged is skipped)

Training, evaluation, export, the baseline and the drift reference ask this class; none of them opens
these files itself, so a change of layout is made here alone.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from leafnet.errors import LeafnetError

MANIFEST_COLUMNS = ("path", "label", "split", "sha256", "width", "height", "source")
MANIFEST, CLASSES, STATS, REJECTED, RECORD = (
    "manifest.csv",
    "classes.json",
    "stats.json",
    "rejected.csv",
    "prepare.json",
)


class PreparedData:
    """A prepared data directory. Readers fail with one line naming the file and the fix."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PreparedData({str(self.root)!r})"

    def is_prepared(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def require(self, what: str = "") -> PreparedData:
        """Self, or a LeafnetError when `root` holds no prepared data (`what`: the option that named it)."""
        if not self.is_prepared():
            named = f"{what}={self.root}" if what else str(self.root)
            raise LeafnetError(
                f"{named} is not a prepared data directory (no {MANIFEST}); run scripts/prepare_data.py first"
            )
        return self

    def classes(self) -> list[str]:
        """Class names in index order."""
        mapping = self._json(CLASSES)
        try:
            return [mapping[str(i)] for i in range(len(mapping))]
        except (KeyError, TypeError):
            raise LeafnetError(f"{self.root / CLASSES} does not map 0..n-1 to class names; re-run prepare") from None

    def rows(self, split: str | None = None) -> list[dict[str, str]]:
        """Manifest rows (all, or one split's) in manifest order."""
        path = self.root / MANIFEST
        if not path.is_file():
            raise LeafnetError(f"{path} not found: is {self.root} a prepared data directory?")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return rows if split is None else [row for row in rows if row["split"] == split]

    def samples(self, split: str) -> list[tuple[Path, int]]:
        """(image path, class index) of one split."""
        index = {name: i for i, name in enumerate(self.classes())}
        rows = self.rows(split)
        unknown = sorted({row["label"] for row in rows} - set(index))
        if unknown:
            raise LeafnetError(
                f"{self.root / MANIFEST} has labels missing from {CLASSES}, e.g. {unknown[0]!r}; re-run prepare"
            )
        return [(self.root / row["path"], index[row["label"]]) for row in rows]

    def stats(self) -> dict:
        return self._json(STATS)

    def record(self) -> dict | None:
        """prepare.json, or None when it is missing or damaged (then prepare rebuilds)."""
        try:
            return json.loads((self.root / RECORD).read_text())
        except (OSError, ValueError):
            return None

    def parameters(self) -> dict:
        """The parameters prepare ran with ({} when unknown)."""
        record = self.record()
        params = record.get("params") if isinstance(record, dict) else None
        return params if isinstance(params, dict) else {}

    def background(self) -> list[int]:
        """What prepare composited alpha over and letterboxed with. Data prepared before stats.json
        recorded it still has it among prepare.json's parameters."""
        stats = self.stats()
        return list(stats.get("background") or self.parameters().get("background") or [0, 0, 0])

    def raw_input(self) -> Path | None:
        """The raw input directory prepare read, when prepare.json names one that still exists."""
        raw = self.parameters().get("input")
        return Path(raw) if raw and Path(raw).is_dir() else None

    def _json(self, name: str) -> dict:
        path = self.root / name
        if not path.is_file():
            raise LeafnetError(
                f"{path} not found: is {self.root} a prepared data directory? Run scripts/prepare_data.py"
            )
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise LeafnetError(f"{path} is not valid JSON ({error}); re-run prepare") from None

    @staticmethod
    def write(
        staging: Path,
        manifest: Iterable[Iterable],
        rejected: Iterable[Iterable],
        classes: list[str],
        stats: dict,
        record: dict,
    ) -> None:
        """Writes the layout's files (not the images) into a staging directory that prepare then swaps in."""
        _write_csv(staging / MANIFEST, MANIFEST_COLUMNS, manifest)
        _write_csv(staging / REJECTED, ("file", "reason"), rejected)
        (staging / CLASSES).write_text(json.dumps({str(i): c for i, c in enumerate(classes)}, indent=2) + "\n")
        (staging / STATS).write_text(json.dumps(stats, indent=2) + "\n")
        (staging / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
