"""Procedural leaf silhouettes in the layout of the Kaggle leaf-classification data.

`generate_leaf_set(out_dir)` writes `images/<id>.png` (white leaf on black, like the Kaggle scans) and
`train.csv` (`id,species`), deterministically from a seed. Geometry lives in leaf coordinates: the
petiole meets the blade at the origin and the midrib runs up the y axis to the apex at (0, 1).
A sample jitters every trait of its species a little, then is mirrored, rotated, scaled and placed on a
canvas of its own size, so the species differ in shape while the pictures differ in everything else.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from leafnet.data.species import SPECIES, LeafSpecies
from leafnet.errors import LeafnetError
from leafnet.fsutil import atomic_directory, is_replaceable
from leafnet.process_pool import ordered_map

GENERATOR_VERSION = 1
_POINTS_PER_SIDE = 400


@dataclass(frozen=True)
class SyntheticConfig:
    per_species: int = 16  # 99 x 16 = 1,584 images, the size of the Kaggle training set
    seed: int = 0  # the set is a pure function of this seed and the generator version
    max_rotation_deg: float = 35.0  # leaves are rotated uniformly within +-this angle
    min_blade_px: int = 200  # blade length in pixels, before rotation
    max_blade_px: int = 480  # the longest blade, in pixels

    def validate(self) -> None:
        if self.per_species < 1:
            raise LeafnetError(f"per_species must be at least 1, got {self.per_species}")
        if not 16 <= self.min_blade_px <= self.max_blade_px:
            raise LeafnetError("blade size: need 16 <= min_blade_px <= max_blade_px")


@dataclass
class GenerateConfig:
    """`scripts/generate_data.py`: the raw synthetic set alone, for pipelines that track raw data (dvc.yaml)."""

    output: str = "data/raw/synthetic"  # where the Kaggle-layout set is written
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    workers: int = 0  # drawing processes; 0 = one per CPU core (how fast, not what: the images are the same)

    def validate(self) -> None:
        self.synthetic.validate()
        if self.workers < 0:
            raise LeafnetError(f"workers must not be negative, got {self.workers}")


def _jitter(rng: np.random.Generator, value: float, rel_sigma: float) -> float:
    return value * float(np.clip(rng.normal(1.0, rel_sigma), 1 - 2.5 * rel_sigma, 1 + 2.5 * rel_sigma))


def jitter_species(species: LeafSpecies, rng: np.random.Generator) -> LeafSpecies:
    """One individual of a species: every continuous trait moves by a few percent."""
    teeth = species.teeth_per_side
    if teeth >= 8:
        teeth += int(rng.integers(-1, 2))
    return replace(
        species,
        widest_at=float(np.clip(species.widest_at + rng.normal(0, 0.02), 0.08, 0.85)),
        half_width=_jitter(rng, species.half_width, 0.04),
        base_exponent=_jitter(rng, species.base_exponent, 0.06),
        apex_exponent=_jitter(rng, species.apex_exponent, 0.06),
        base_lobe_drop=_jitter(rng, species.base_lobe_drop, 0.1),
        teeth_per_side=teeth,
        tooth_depth=_jitter(rng, species.tooth_depth, 0.1),
        petiole=_jitter(rng, species.petiole, 0.1),
        lobe_depth=min(_jitter(rng, species.lobe_depth, 0.06), 0.9),
        lobe_spread_deg=_jitter(rng, species.lobe_spread_deg, 0.04),
        hub=_jitter(rng, species.hub, 0.06),
    )


def _tooth_profile(margin: str, phase: np.ndarray) -> np.ndarray:
    if margin == "serrate":  # slow rise, sharp drop: teeth lean towards the apex
        return phase**1.5
    if margin == "dentate":  # symmetric triangles pointing outwards
        return 1.0 - np.abs(2.0 * phase - 1.0)
    if margin == "crenate":  # rounded scallops with sharp sinuses
        return np.sqrt(np.sin(np.pi * phase))
    return np.zeros_like(phase)


def _add_margin(side: np.ndarray, outward_sign: float, species: LeafSpecies) -> np.ndarray:
    """Offsets a blade side (points from base to apex) along its outward normal by the tooth profile."""
    if species.margin == "entire":
        return side
    step = np.diff(side, axis=0, prepend=side[:1])
    arc = np.cumsum(np.hypot(step[:, 0], step[:, 1]))
    s = arc / arc[-1]
    tangent = np.gradient(side, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    normal = outward_sign * np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    start, end = 0.06, 0.96  # no teeth right at the base or on the tip
    toothed = np.clip((s - start) / (end - start), 0.0, 1.0)
    envelope = np.clip(np.minimum(toothed, 1.0 - toothed) / 0.08, 0.0, 1.0)
    offset = species.tooth_depth * envelope * _tooth_profile(species.margin, (toothed * species.teeth_per_side) % 1.0)
    return side + normal * offset[:, None]


def _shape_noise(rng: np.random.Generator, t: np.ndarray, amplitude: float = 0.015) -> np.ndarray:
    """A smooth random wobble of a side's width, so no two blades are exact copies."""
    wobble = np.zeros_like(t)
    for frequency in (1, 2, 3):
        wobble += rng.normal(0, amplitude / frequency) * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    return 1.0 + wobble


def blade_polygon(species: LeafSpecies, rng: np.random.Generator) -> np.ndarray:
    """Closed outline of a simple or pinnately lobed blade, in leaf coordinates."""
    t = np.linspace(0.0, 1.0, _POINTS_PER_SIDE)
    tm = species.widest_at
    lower = np.sin(0.5 * np.pi * np.clip(t / tm, 0, 1)) ** species.base_exponent
    upper = np.sin(0.5 * np.pi * np.clip((1 - t) / (1 - tm), 0, 1)) ** species.apex_exponent
    width = species.half_width * np.where(t < tm, lower, upper)
    # Cordate bases: the blade first runs below the petiole, then turns up into the basal lobes.
    rise = t - species.base_lobe_drop * (t / 0.1) * np.exp(1 - t / 0.1)
    if species.outline == "pinnate":
        u = (np.clip((t - 0.04) / 0.92, 0, 1) * species.lobes) % 1.0
        lobe = (1.0 - np.abs(2 * u - 1)) if species.pointed_lobes else np.sqrt(np.sin(np.pi * u))
        width = width * ((1 - species.lobe_depth) + species.lobe_depth * lobe)
        rise = rise + 0.35 * species.lobe_depth * species.half_width * lobe * np.sin(np.pi * t)
    sides = []
    for sign in (1.0, -1.0):
        side = np.stack([sign * width * _shape_noise(rng, t), rise], axis=1)
        sides.append(_add_margin(side, sign, species))
    return np.concatenate([sides[0], sides[1][::-1]])


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rotation.T


def palmate_polygons(species: LeafSpecies, rng: np.random.Generator) -> list[np.ndarray]:
    """A palmate leaf is the union of lobe blades fanned around the base and an undivided hub."""
    lobe = replace(species, outline="ovate", lobes=1)
    centre = (species.lobes - 1) / 2
    polygons = []
    for i in range(species.lobes):
        rank = abs(i - centre) / max(centre, 1)
        length = (1.0 - 0.35 * rank**1.5) * _jitter(rng, 1.0, 0.04)
        angle = species.lobe_spread_deg * (i / max(species.lobes - 1, 1) - 0.5) + rng.normal(0, 3.0)
        polygons.append(_rotate(blade_polygon(lobe, rng) * length, angle))
    circle = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    polygons.append(species.hub * np.stack([np.cos(circle), 0.25 + np.sin(circle)], axis=1))
    return polygons


def petiole_polygon(species: LeafSpecies, rng: np.random.Generator) -> np.ndarray:
    y = np.linspace(-species.petiole, 0.02, 24)
    bend = rng.normal(0, 0.15) * species.petiole * (y / species.petiole) ** 2
    half = 0.012
    return np.concatenate([np.stack([bend + half, y], 1), np.stack([bend - half, y], 1)[::-1]])


def leaf_polygons(species: LeafSpecies, rng: np.random.Generator) -> list[np.ndarray]:
    """All polygons of one jittered individual, in leaf coordinates."""
    individual = jitter_species(species, rng)
    blade = palmate_polygons(individual, rng) if individual.outline == "palmate" else [blade_polygon(individual, rng)]
    return [*blade, petiole_polygon(individual, rng)]


def render_leaf(species: LeafSpecies, rng: np.random.Generator, config: SyntheticConfig) -> Image.Image:
    """Draws one sample: jittered shape, random mirror, rotation, scale and canvas margins."""
    polygons = leaf_polygons(species, rng)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    scale = rng.uniform(config.min_blade_px, config.max_blade_px)
    # Image rows grow downwards, so flip y to keep the apex up before rotating.
    placed = [_rotate(p * np.array([mirror, -1.0]), angle) * scale for p in polygons]
    everything = np.concatenate(placed)
    low, high = everything.min(axis=0), everything.max(axis=0)
    pad_before = rng.uniform(0.04, 0.18, size=2) * scale
    pad_after = rng.uniform(0.04, 0.18, size=2) * scale
    size = np.ceil(high - low + pad_before + pad_after).astype(int)
    image = Image.new("L", (int(size[0]), int(size[1])), 0)
    draw = ImageDraw.Draw(image)
    for polygon in placed:
        draw.polygon([tuple(xy) for xy in (polygon - low + pad_before)], fill=255)
    return image


def _sample_plan(config: SyntheticConfig) -> list[tuple[int, int, int]]:
    """(kaggle id, species index, sample index) for every image; ids are shuffled across species."""
    pairs = [(s, k) for s in range(len(SPECIES)) for k in range(config.per_species)]
    order = np.random.default_rng([config.seed, 7]).permutation(len(pairs))
    return [(image_id + 1, *pairs[i]) for image_id, i in enumerate(order)]


def _generator_params(config: SyntheticConfig) -> dict:
    """What the images depend on: the settings, the renderer version and the species table itself,
    so that editing a species regenerates the set instead of keeping stale images."""
    species = hashlib.sha256(repr(SPECIES).encode()).hexdigest()
    return {"generator_version": GENERATOR_VERSION, "species_sha256": species, **config.__dict__}


def _draw_and_save(item: tuple[int, int, int], config: SyntheticConfig, images: Path) -> None:
    image_id, species_index, sample_index = item
    rng = np.random.default_rng([config.seed, species_index, sample_index])
    render_leaf(SPECIES[species_index], rng, config).save(images / f"{image_id}.png", optimize=False)


def generate_leaf_set(
    out_dir: str | Path, config: SyntheticConfig = SyntheticConfig(), progress=None, workers: int = 0
) -> Path:
    """Writes the synthetic set to `out_dir` unless an identical one is already there, drawing the images in
    `workers` processes (0: one per CPU core), as prepare decodes them."""
    config.validate()
    out_dir = Path(out_dir)
    params = _generator_params(config)
    marker = out_dir / "generator.json"
    if marker.is_file() and json.loads(marker.read_text()) == params and (out_dir / "train.csv").is_file():
        return out_dir
    if not is_replaceable(out_dir, marker.name):
        raise LeafnetError(
            f"{out_dir} exists and was not written by the generator (no generator.json); "
            "give the synthetic source an empty or new input= directory"
        )
    plan = _sample_plan(config)
    with atomic_directory(out_dir) as staging:
        (staging / "images").mkdir()
        draw = functools.partial(_draw_and_save, config=config, images=staging / "images")
        # Every image has its own generator, so the processes that draw them change nothing.
        for _ in zip(progress(plan) if progress else plan, ordered_map(draw, plan, workers), strict=True):
            pass
        with open(staging / "train.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["id", "species"])
            for image_id, species_index, _ in sorted(plan):
                writer.writerow([image_id, SPECIES[species_index].name])
        (staging / "generator.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return out_dir
