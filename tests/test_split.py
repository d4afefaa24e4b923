from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from leafnet.data.split import min_class_size, split_counts, stratified_split

fractions = st.floats(min_value=0.0, max_value=0.45)


@given(n=st.integers(1, 500), val=fractions, test=fractions)
def test_split_counts_cover_the_class_and_give_each_requested_split_an_image(n, val, test):
    if n < min_class_size(val, test):
        return
    n_train, n_val, n_test = split_counts(n, val, test)
    assert n_train + n_val + n_test == n
    assert n_train >= 1
    assert (n_val >= 1) == (val > 0) and (n_test >= 1) == (test > 0)


class_sizes = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(3, 40), min_size=1, max_size=8)


@given(sizes=class_sizes, seed=st.integers(0, 2**16))
def test_stratified_split_is_disjoint_covering_stratified_and_deterministic(sizes, seed):
    labels = [label for label, n in sorted(sizes.items()) for _ in range(n)]
    splits = stratified_split(labels, 0.2, 0.2, seed)
    assert len(splits) == len(labels) and set(splits) <= {"train", "val", "test"}
    per_class = Counter(zip(labels, splits, strict=True))
    for label, n in sizes.items():
        expected = dict(zip(("train", "val", "test"), split_counts(n, 0.2, 0.2), strict=True))
        assert {s: per_class[(label, s)] for s in expected} == expected
    assert stratified_split(labels, 0.2, 0.2, seed) == splits


@given(sizes=class_sizes, seed=st.integers(0, 100))
def test_adding_a_class_does_not_move_the_images_of_another(sizes, seed):
    labels = [label for label, n in sorted(sizes.items()) for _ in range(n)]
    before = stratified_split(labels, 0.2, 0.2, seed)
    after = stratified_split([*labels, *["zzzzz"] * 7], 0.2, 0.2, seed)
    assert after[: len(labels)] == before
