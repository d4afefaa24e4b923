import csv
import hashlib
import itertools
from collections import Counter
from pathlib import Path

import numpy as np

from leafnet.data.species import SPECIES, species_table_markdown
from leafnet.data.synthetic import SyntheticConfig, generate_leaf_set, render_leaf
from tests.conftest import REPO

SMALL = SyntheticConfig(per_species=2, seed=11, min_blade_px=50, max_blade_px=90)


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.*")}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = generate_leaf_set(tmp_path / "a", SMALL, workers=2)  # 198 images: drawn by a pool of two processes
    b = generate_leaf_set(tmp_path / "b", SMALL, workers=1)  # and one at a time, in this process
    assert len(_digest(a)) == 2 * 99 + 2 and _digest(a) == _digest(b)
    c = generate_leaf_set(tmp_path / "c", SyntheticConfig(**{**SMALL.__dict__, "seed": 12}))
    assert _digest(c)["images/1.png"] != _digest(a)["images/1.png"]


def test_kaggle_layout_and_class_balance(tmp_path):
    root = generate_leaf_set(tmp_path / "raw", SMALL)
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "species"]
    assert [int(r["id"]) for r in rows] == list(range(1, 99 * 2 + 1))
    assert Counter(r["species"] for r in rows) == {s.name: 2 for s in SPECIES}
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{r['id']}.png" for r in rows)
    # ids are shuffled across species, as in the Kaggle set, so the id does not give the class away: in id
    # order, species neither come in blocks (99 neighbours of one species if grouped; a shuffle of 2 x 99
    # gives about 1) nor follow the species list.
    order = [r["species"] for r in rows]
    assert sum(a == b for a, b in itertools.pairwise(order)) <= 5
    first_seen = list(dict.fromkeys(order))
    assert first_seen != [s.name for s in SPECIES] and first_seen != sorted(first_seen)


def test_images_are_binary_silhouettes_on_varied_canvases():
    sizes = set()
    for k in range(6):
        image = render_leaf(SPECIES[0], np.random.default_rng([0, 0, k]), SyntheticConfig())
        pixels = np.asarray(image)
        assert image.mode == "L" and set(np.unique(pixels)) <= {0, 255}
        assert 0.1 < (pixels == 255).mean() < 0.8  # a leaf, not an empty or a full canvas
        assert pixels[0].max() == 0 and pixels[-1].max() == 0  # margins around the leaf
        sizes.add(image.size)
    assert len(sizes) == 6


def test_sister_traits_separate_species_beyond_their_sample_jitter():
    # Slender and broad sisters must be told apart by the shape, not by luck.
    config = SyntheticConfig(max_rotation_deg=0)

    def aspects(name: str) -> list[float]:  # width / height of the upright silhouette
        species = next(s for s in SPECIES if s.name == name)
        values = []
        for k in range(8):
            ys, xs = np.nonzero(np.asarray(render_leaf(species, np.random.default_rng([1, k]), config)))
            values.append(np.ptp(xs) / np.ptp(ys))
        return values

    assert max(aspects("Salix_Angustifolia")) < min(aspects("Salix_Integra"))
    assert max(aspects("Betula_Crenata")) < min(aspects("Betula_Latifolia"))


def test_second_run_with_same_config_is_skipped(tmp_path):
    root = generate_leaf_set(tmp_path / "raw", SMALL)
    mtime = (root / "images" / "1.png").stat().st_mtime_ns
    generate_leaf_set(root, SMALL)
    assert (root / "images" / "1.png").stat().st_mtime_ns == mtime


def test_editing_a_species_regenerates_the_set(tmp_path, monkeypatch):
    from dataclasses import replace

    import leafnet.data.synthetic as synthetic

    root = generate_leaf_set(tmp_path / "raw", SMALL)
    before = _digest(root)
    edited = (replace(SPECIES[0], half_width=0.45), *SPECIES[1:])
    monkeypatch.setattr(synthetic, "SPECIES", edited)
    generate_leaf_set(root, SMALL)
    changed = [name for name, digest in _digest(root).items() if before[name] != digest]
    assert "generator.json" in changed and len(changed) > 1


def test_species_doc_matches_the_table():
    assert (REPO / "docs" / "species.md").read_text() == species_table_markdown()


def test_species_table_covers_the_required_traits():
    outlines = {s.outline for s in SPECIES}
    assert {"ovate", "lanceolate", "cordate", "orbicular", "palmate", "pinnate"} <= outlines
    assert {s.margin for s in SPECIES} == {"entire", "serrate", "dentate", "crenate"}
    assert {s.lobes for s in SPECIES if s.outline == "palmate"} == {3, 5, 7}
    assert len({s.name for s in SPECIES}) == 99
