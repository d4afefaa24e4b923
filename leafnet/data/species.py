"""The species table of the synthetic leaf set: 99 species described by botanical traits.

Each species is a `LeafSpecies`: an outline archetype (its "genus") refined by margin, apex, aspect,
petiole and lobing. Species within a genus differ in one or two traits, and some pairs are sister
species that differ in a single small trait (tooth size, slenderness, petiole length, lobe count),
so a classifier has to look at the margin and the proportions, not only at the outline.

The table is fixed code, not drawn from a seed: a seed changes the samples, never the species.
`species_table_markdown()` renders docs/species.md from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MARGINS = ("entire", "serrate", "dentate", "crenate")


@dataclass(frozen=True)
class LeafSpecies:
    """Traits of one species, in units of the blade length (midrib from base to apex = 1)."""

    name: str
    genus: str
    outline: str  # ovate, elliptic, obovate, lanceolate, orbicular, cordate, deltoid, palmate, pinnate
    widest_at: float  # position of the widest point along the midrib, 0 = base, 1 = apex
    half_width: float  # half of the blade width: aspect ratio = 2 * half_width
    base_exponent: float  # < 1 rounded/truncate base, ~1 cuneate, > 1 attenuate
    apex_exponent: float  # < 1 obtuse/rounded apex, ~1 acute, > 1.3 acuminate
    base_lobe_drop: float = 0.0  # > 0: basal lobes hang below the petiole (cordate base)
    margin: str = "entire"
    teeth_per_side: int = 0
    tooth_depth: float = 0.0
    petiole: float = 0.12  # petiole length
    lobes: int = 1  # palmate: number of lobes; pinnate: lobes per side
    lobe_depth: float = 0.0  # pinnate: how far sinuses cut towards the midrib (0..1)
    lobe_spread_deg: float = 0.0  # palmate: angle between the outermost lobes
    hub: float = 0.0  # palmate: radius of the undivided centre (small = deep sinuses)
    pointed_lobes: bool = False  # pinnate: pointed rather than rounded lobes

    def __post_init__(self) -> None:
        if self.margin not in MARGINS:
            raise ValueError(f"species {self.name}: unknown margin {self.margin!r}")
        if self.margin != "entire" and (self.teeth_per_side <= 0 or self.tooth_depth <= 0):
            raise ValueError(f"species {self.name}: a toothed margin needs teeth and depth")

    def describe(self) -> str:
        parts = [self.outline]
        if self.outline == "palmate":
            parts.append(f"{self.lobes} lobes, {'deep' if self.hub < 0.25 else 'shallow'} sinuses")
        elif self.outline == "pinnate":
            shape = "pointed" if self.pointed_lobes else "rounded"
            parts.append(f"{self.lobes} {shape} lobes/side, sinus depth {self.lobe_depth:.2f}")
        else:
            parts.append(f"aspect {2 * self.half_width:.2f}")
        if self.margin == "entire":
            parts.append("entire margin")
        else:
            parts.append(f"{self.margin} margin, {self.teeth_per_side} teeth/side, depth {self.tooth_depth:.3f}")
        if self.apex_exponent >= 1.3:
            parts.append("acuminate apex")
        parts.append(f"petiole {self.petiole:.2f}")
        return "; ".join(parts)


# Outline archetypes of the simple-leaved genera (entire margin, default petiole).
_SIMPLE_GENERA = (
    LeafSpecies("", "Betula", "ovate", 0.35, 0.30, 0.60, 1.00),
    LeafSpecies("", "Fagus", "elliptic", 0.50, 0.24, 0.85, 0.90),
    LeafSpecies("", "Magnolia", "obovate", 0.68, 0.27, 1.25, 0.55),
    LeafSpecies("", "Salix", "lanceolate", 0.38, 0.11, 0.85, 1.20),
    LeafSpecies("", "Cercis", "orbicular", 0.45, 0.46, 0.55, 0.65, base_lobe_drop=0.10),
    LeafSpecies("", "Tilia", "cordate", 0.33, 0.38, 0.45, 1.05, base_lobe_drop=0.16),
    LeafSpecies("", "Populus", "deltoid", 0.12, 0.40, 0.30, 1.00),
)

# Nine species per simple genus: the margins, plus sister species that differ in one trait.
_SIMPLE_VARIANTS = (
    ("Integra", {}),
    ("Angustifolia", {"half_width": 0.72}),  # sister of Integra: slenderer blade
    ("Longipes", {"petiole": 0.38}),  # sister of Integra: long petiole
    ("Serrulata", {"margin": "serrate", "teeth_per_side": 16, "tooth_depth": 0.032}),
    ("Serrata", {"margin": "serrate", "teeth_per_side": 11, "tooth_depth": 0.045}),  # coarse sister
    ("Dentata", {"margin": "dentate", "teeth_per_side": 12, "tooth_depth": 0.05}),
    ("Acuminata", {"margin": "dentate", "teeth_per_side": 12, "tooth_depth": 0.05, "apex_exponent": 1.9}),
    ("Crenata", {"margin": "crenate", "teeth_per_side": 10, "tooth_depth": 0.04}),
    ("Latifolia", {"margin": "crenate", "teeth_per_side": 10, "tooth_depth": 0.04, "half_width": 1.3}),
)

# Palmately lobed genera by lobe count; lobes themselves are small lanceolate-ovate blades.
_PALMATE_GENERA = (("Vitis", 3, 100.0), ("Acer", 5, 200.0), ("Liquidambar", 7, 230.0))
_PALMATE_VARIANTS = (
    ("Integrum", {"hub": 0.34}),
    ("Integrum_Profundum", {"hub": 0.16}),
    ("Serratum", {"hub": 0.34, "margin": "serrate", "teeth_per_side": 8, "tooth_depth": 0.035}),
    ("Serratum_Profundum", {"hub": 0.16, "margin": "serrate", "teeth_per_side": 8, "tooth_depth": 0.035}),
    ("Dentatum", {"hub": 0.34, "margin": "dentate", "teeth_per_side": 5, "tooth_depth": 0.06}),
    ("Dentatum_Profundum", {"hub": 0.16, "margin": "dentate", "teeth_per_side": 5, "tooth_depth": 0.06}),
)

# Pinnately lobed genera: rounded lobes (white oaks) and pointed lobes (hawthorns).
_PINNATE_GENERA = (
    LeafSpecies("", "Quercus", "pinnate", 0.55, 0.30, 0.9, 0.8, lobes=4, lobe_depth=0.45),
    LeafSpecies("", "Crataegus", "pinnate", 0.55, 0.30, 0.9, 0.8, lobes=4, lobe_depth=0.45, pointed_lobes=True),
)
_PINNATE_VARIANTS = tuple(
    (f"{count_name}_{depth_name}", {"lobes": lobes, "lobe_depth": depth, **extra})
    for lobes, count_name in ((3, "Pauciloba"), (4, "Lobata"), (6, "Multiloba"))
    for depth_name, depth, extra in (
        ("Sinuata", 0.3, {}),
        ("Incisa", 0.6, {}),
        ("Serrata", 0.6, {"margin": "serrate", "teeth_per_side": 16, "tooth_depth": 0.03}),
    )
)


def _build_table() -> tuple[LeafSpecies, ...]:
    table: list[LeafSpecies] = []
    for genus in _SIMPLE_GENERA:
        for epithet, change in _SIMPLE_VARIANTS:
            if "half_width" in change:
                change = {**change, "half_width": genus.half_width * change["half_width"]}
            table.append(replace(genus, name=f"{genus.genus}_{epithet}", **change))
    for genus_name, lobes, spread in _PALMATE_GENERA:
        lobe = LeafSpecies("", genus_name, "palmate", 0.4, 0.23, 0.7, 1.1, lobes=lobes, lobe_spread_deg=spread)
        for epithet, change in _PALMATE_VARIANTS:
            table.append(replace(lobe, name=f"{genus_name}_{epithet}", petiole=0.3, **change))
    for genus in _PINNATE_GENERA:
        for epithet, change in _PINNATE_VARIANTS:
            table.append(replace(genus, name=f"{genus.genus}_{epithet}", **change))
    return tuple(table)


SPECIES: tuple[LeafSpecies, ...] = _build_table()
assert len(SPECIES) == 99 and len({s.name for s in SPECIES}) == 99


_DOC_INTRO = """# The synthetic leaf species

The embedded default data set (`leafnet/data/species.py`): 99 species in 12 genera. Units are blade
lengths (midrib from base to apex = 1); aspect is width / length. Every sample jitters each continuous
trait by a few percent, is mirrored at random, rotated up to ±35°, scaled, and placed on a canvas of its
own size. Sister species differ in one trait: *Integra* / *Angustifolia* (slenderness) / *Longipes*
(petiole), *Serrulata* / *Serrata* (fine vs coarse teeth), *Dentata* / *Acuminata* (apex), *Crenata* /
*Latifolia* (width); every palmate species has a shallow and a deep (*Profundum*) twin, and the pinnate
genera differ only in rounded (*Quercus*) against pointed (*Crataegus*) lobes.

Generated by `make species-doc`; a test fails when this file and the code disagree.

"""


def species_table_markdown() -> str:
    """docs/species.md: the introduction and one table row per species."""
    lines = ["| # | species | genus | traits |", "|---|---|---|---|"]
    for index, species in enumerate(SPECIES):
        lines.append(f"| {index} | {species.name} | {species.genus} | {species.describe()} |")
    return _DOC_INTRO + "\n".join(lines) + "\n"
