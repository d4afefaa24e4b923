"""The checks' data: the project's own synthetic leaves, generated and prepared into the work directory (or a
prepared data set the user names)."""

from __future__ import annotations

from pathlib import Path

from leafnet.data.prepare import PrepareConfig, prepare
from leafnet.data.prepared import PreparedData
from leafnet.data.synthetic import SyntheticConfig
from leafnet.gpu_check.config import DataSection

# Small leaves on small canvases: the prepared size is tens of pixels, and drawing 480 px blades to shrink them
# would only cost time.
MIN_BLADE_PX, MAX_BLADE_PX = 60, 140


def prepared_data(section: DataSection, work_dir: Path) -> dict:
    """Generates and prepares the synthetic set (unless `section.root` names a prepared one); its facts."""
    if section.root:
        PreparedData(section.root).require("data.root")
        root = Path(section.root)
        stats = PreparedData(root).stats()
    else:
        root = work_dir / "data" / "prepared"
        config = PrepareConfig(
            source="synthetic",
            input=str(work_dir / "data" / "raw"),
            output=str(root),
            size=section.size,
            val_fraction=0.2,
            test_fraction=0.2,
            seed=section.seed,
            workers=0,
            synthetic=SyntheticConfig(
                per_species=section.per_species, seed=section.seed, min_blade_px=MIN_BLADE_PX, max_blade_px=MAX_BLADE_PX
            ),
        )
        stats = prepare(config, log=lambda _: None)
    totals = stats["totals"]
    return {
        "root": str(root),
        "generated": not section.root,
        "classes": stats["num_classes"],
        "image_size": stats["image_size"],
        **{f"{split}_images": totals[split] for split in ("train", "val", "test")},
    }
