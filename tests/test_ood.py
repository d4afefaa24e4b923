import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from leafnet.data.ood import LEAF_FAMILIES, OOD_FAMILIES, OodImage, generate_ood, write_ood
from leafnet.data.species import SPECIES
from leafnet.data.synthetic import SyntheticConfig, render_leaf
from leafnet.errors import LeafnetError

PER_FAMILY = 6
NON_LEAF = [f for f in OOD_FAMILIES if f not in LEAF_FAMILIES]


def _leaves() -> list[Image.Image]:
    """Small synthetic leaves padded to 128 x 128, like the prepared test split: white on black, L and RGB."""
    config = SyntheticConfig(min_blade_px=50, max_blade_px=90)
    leaves = [
        ImageOps.pad(render_leaf(SPECIES[i * 13], np.random.default_rng([2, i]), config), (128, 128), color=0)
        for i in range(4)
    ]
    leaves[1] = leaves[1].convert("RGB")
    return leaves


@pytest.fixture(scope="module")
def leaves() -> list[Image.Image]:
    return _leaves()


@pytest.fixture(scope="module")
def ood(leaves) -> list[OodImage]:
    return generate_ood(PER_FAMILY, seed=3, leaves=leaves)


def _fingerprint(images: list[OodImage]) -> list[tuple]:
    return [(i.family, i.name, i.image.mode, i.image.size, i.image.tobytes()) for i in images]


def test_same_seed_gives_identical_pixels_and_another_seed_differs(ood, leaves):
    assert _fingerprint(generate_ood(PER_FAMILY, seed=3, leaves=_leaves())) == _fingerprint(ood)
    other = generate_ood(PER_FAMILY, seed=4, leaves=leaves)
    for family in OOD_FAMILIES:
        a = [i.image.tobytes() for i in ood if i.family == family]
        b = [i.image.tobytes() for i in other if i.family == family]
        assert sum(x != y for x, y in zip(a, b, strict=True)) == PER_FAMILY, family


def test_every_family_with_its_count_unique_names_modes_and_sizes(ood):
    assert [i.family for i in ood] == [f for f in OOD_FAMILIES for _ in range(PER_FAMILY)]
    names = [i.name for i in ood]
    assert len(set(names)) == len(names)
    for item in ood:
        assert re.fullmatch(rf"{item.family}-\d{{4}}-[a-z_]+", item.name), item.name
        assert item.image.mode in ("RGB", "L"), item.name
        width, height = item.image.size
        assert 64 <= width <= 640 and 64 <= height <= 640, (item.name, item.image.size)
        if item.family in NON_LEAF:
            assert 0.6 - 0.02 <= width / height <= 1.6 + 0.02, (item.name, item.image.size)


def test_families_are_varied_and_include_scan_like_renderings(ood):
    for family in OOD_FAMILIES:
        images = [i.image for i in ood if i.family == family]
        assert len({im.tobytes() for im in images}) == PER_FAMILY, family
        assert len({im.size for im in images}) > 1, family
    non_leaf = [i.image for i in ood if i.family in NON_LEAF]
    assert Counter(im.mode for im in non_leaf).keys() == {"RGB", "L"}
    # The hard case: white or grey shapes on a black ground, one channel, like the leaf scans themselves.
    scan_like = [
        i
        for i in ood
        if i.family in ("geometric", "glyphs", "blobs")
        and i.image.mode == "L"
        and i.image.getpixel((0, 0)) < 30
        and i.image.getextrema()[1] >= 150
    ]
    assert scan_like


def test_a_family_does_not_depend_on_the_others_or_on_the_count(ood, leaves):
    alone = generate_ood(PER_FAMILY, seed=3, families=["noise"])
    assert _fingerprint(alone) == _fingerprint([i for i in ood if i.family == "noise"])
    fewer = generate_ood(2, seed=3, leaves=leaves, families=["leaf_crops", "scenes"])
    expected = [i for i in ood if i.family in ("scenes", "leaf_crops") and int(i.name.split("-")[1]) < 2]
    assert _fingerprint(fewer) == _fingerprint(expected)


def test_leaf_families_differ_from_their_source_leaves(ood, leaves):
    for item in ood:
        if item.family not in LEAF_FAMILIES:
            continue
        pixels = np.asarray(item.image.convert("L"), np.float32)
        closest = min(
            np.abs(pixels - np.asarray(leaf.convert("L").resize(item.image.size), np.float32)).mean() for leaf in leaves
        )
        assert closest > 10, (item.name, closest)


def test_leaf_families_need_leaves():
    with pytest.raises(LeafnetError, match="needs leaf images"):
        generate_ood(2)
    with pytest.raises(LeafnetError, match="leaf_blurred needs leaf images"):
        generate_ood(2, families=["noise", "leaf_blurred"])
    assert {i.family for i in generate_ood(1, families=NON_LEAF)} == set(NON_LEAF)


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"families": ["noise", "petals"]}, "unknown OOD family 'petals'"),
        ({"per_family": 0, "families": ["noise"]}, "per_family must be at least 1, got 0"),
        ({"per_family": -3, "families": ["noise"]}, "per_family must be at least 1, got -3"),
        ({"seed": -1, "families": ["noise"]}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_name_the_culprit(kwargs, culprit):
    with pytest.raises(LeafnetError, match=re.escape(culprit)) as caught:
        generate_ood(**kwargs)
    assert "\n" not in str(caught.value)


def test_write_ood_writes_one_folder_per_family(tmp_path, leaves):
    images = generate_ood(2, seed=1, leaves=leaves)
    out = write_ood(images, tmp_path / "ood")
    assert out == tmp_path / "ood"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{i.family}/{i.name}.png" for i in images)
    first = images[0]
    with Image.open(out / first.family / f"{first.name}.png") as back:
        assert back.mode == first.image.mode and back.tobytes() == first.image.tobytes()


def test_write_ood_refuses_a_file_in_the_way(tmp_path):
    target = tmp_path / "ood"
    target.write_text("not a directory")
    with pytest.raises(LeafnetError, match="not a directory"):
        write_ood(generate_ood(1, families=["noise"]), target)
