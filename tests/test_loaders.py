from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import Dataset

from leafnet.data.dataset import ManifestDataset
from leafnet.data.loaders import (
    BalancedSampler,
    EvalShardSampler,
    LoaderConfig,
    build_loader,
    sample_seed,
    sample_seeds,
)
from leafnet.data.seed_sequence import generate_states
from leafnet.data.transforms import PreprocessSpec, eval_transform, train_transform
from leafnet.errors import LeafnetError


@given(size=st.integers(0, 300), world=st.integers(1, 8))
def test_eval_shards_are_disjoint_and_cover_every_index_once(size, world):
    seen = Counter(i for rank in range(world) for i in EvalShardSampler(size, rank, world))
    assert sorted(seen) == list(range(size)) and set(seen.values()) <= {1}


def test_two_simulated_ranks_evaluate_every_sample_exactly_once(prepared_synthetic):
    spec = PreprocessSpec.from_prepared(prepared_synthetic)
    dataset = ManifestDataset(prepared_synthetic, "val", eval_transform(spec))
    assert len(dataset) == 99  # odd: a padding sampler would count one sample twice
    labels, images = [], 0
    for rank in range(2):
        loader = build_loader(dataset, LoaderConfig(batch_size=16, workers=1), train=False, rank=rank, world_size=2)
        for batch, target in loader:
            images += batch.shape[0]
            labels += target.tolist()
    assert images == 99 and Counter(labels) == Counter(dataset.targets)


def test_train_sampler_reshuffles_per_epoch_and_splits_ranks(prepared_synthetic):
    dataset = ManifestDataset(prepared_synthetic, "train")
    loaders = [build_loader(dataset, LoaderConfig(workers=0), train=True, rank=r, world_size=2) for r in range(2)]
    epoch0 = [[index for index, _ in loader.sampler] for loader in loaders]
    assert not set(epoch0[0]) & set(epoch0[1])
    assert set(epoch0[0]) | set(epoch0[1]) == set(range(len(dataset)))
    loaders[0].sampler.set_epoch(1)
    assert [index for index, _ in loaders[0].sampler] != epoch0[0]


@pytest.mark.slow
def test_seeded_workers_give_identical_augmented_batches(prepared_synthetic):
    spec = PreprocessSpec.from_prepared(prepared_synthetic)
    dataset = ManifestDataset(prepared_synthetic, "train", train_transform(spec))

    def first_batch(seed):
        loader = build_loader(dataset, LoaderConfig(batch_size=8, workers=2, seed=seed), train=True)
        return next(iter(loader))[0]

    a, b, c = first_batch(5), first_batch(5), first_batch(6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_transforms_use_the_prepared_statistics(prepared_synthetic):
    spec = PreprocessSpec.from_prepared(prepared_synthetic, input_size=40)
    dataset = ManifestDataset(prepared_synthetic, "test", eval_transform(spec))
    image, label = dataset[0]
    assert image.shape == (3, 40, 40) and 0 <= label < 99
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    # normalised with the train split's own mean/std, the test split is near zero mean, unit std
    assert abs(batch.mean().item()) < 0.3 and 0.7 < batch.std().item() < 1.3
    assert train_transform(spec)(ManifestDataset(prepared_synthetic, "train")[0][0]).shape == (3, 40, 40)


def test_dataset_errors_name_the_problem(tmp_path, prepared_synthetic):
    with pytest.raises(LeafnetError, match=r"classes\.json not found"):
        ManifestDataset(tmp_path, "train")
    with pytest.raises(LeafnetError, match="unknown split 'validation'"):
        ManifestDataset(prepared_synthetic, "validation")


def test_seeded_samples_ignore_numpy_global_state_even_with_randaugment(prepared_synthetic):
    import numpy as np

    from leafnet.data.transforms import AugmentConfig

    spec = PreprocessSpec.from_prepared(prepared_synthetic)
    dataset = ManifestDataset(
        prepared_synthetic, "train", train_transform(spec, AugmentConfig(auto_augment="rand-m9-mstd0.5"))
    )
    outputs = []
    for state in (1, 2, 3):
        np.random.seed(state)
        outputs.append(dataset[(0, 1234)][0])
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])
    np.random.seed(7)
    before = np.random.random()
    np.random.seed(7)
    dataset[(0, 99)]
    assert np.random.random() == before  # the caller's numpy stream is restored


def test_a_resumed_epoch_skips_consumed_samples_without_reading_them(prepared_synthetic, monkeypatch):
    dataset = ManifestDataset(
        prepared_synthetic, "train", eval_transform(PreprocessSpec.from_prepared(prepared_synthetic))
    )
    loader = build_loader(dataset, LoaderConfig(batch_size=8, workers=0), train=True, rank=1, world_size=2)
    loader.sampler.set_epoch(3)
    whole = list(loader.sampler)
    loader.sampler.set_epoch(3, start=16)  # two batches of this rank's shard done
    assert list(loader.sampler) == whole[16:]  # the same order and augmentation seeds, minus the head
    assert len(loader) == len(whole) // 8 - 2
    read = []
    original = ManifestDataset.__getitem__
    monkeypatch.setattr(ManifestDataset, "__getitem__", lambda self, key: read.append(key) or original(self, key))
    assert sum(len(targets) for _, targets in loader) == len(whole) - 16 - len(whole) % 8 * loader.drop_last
    assert read[0] == whole[16]  # nothing before it was opened
    loader.sampler.set_epoch(4)
    assert len(list(loader.sampler)) == len(whole)  # the skip was for that epoch only
    with pytest.raises(ValueError, match="cannot start epoch 4 at sample"):
        loader.sampler.set_epoch(4, start=len(whole) + 1)


@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    world=st.integers(1, 4),
    epoch=st.integers(0, 3),
)
def test_balanced_draws_shard_disjointly_and_cover_classes_evenly(counts, world, epoch):
    targets = [label for label, count in enumerate(counts) for _ in range(count)]
    samplers = [BalancedSampler(targets, world, rank, seed=3) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    indices, repeats = samplers[0].draw()
    shards = [sampler.shard() for sampler in samplers]
    per_rank = -(-len(targets) // world)
    assert [len(shard) for shard in shards] == [len(sampler) for sampler in samplers] == [per_rank] * world
    # rank r holds positions r, r + world, ... of the one draw: disjoint shares that make it up
    assert [shards[p % world][p // world] for p in range(len(indices))] == list(zip(indices, repeats, strict=True))
    per_class = Counter(targets[i] for i in indices)
    assert set(per_class) == set(range(len(counts))) and max(per_class.values()) - min(per_class.values()) <= 1
    for label in range(len(counts)):  # within a class, an image repeats only once all of them were drawn
        drawn = Counter(i for i in indices if targets[i] == label)
        members = [i for i, t in enumerate(targets) if t == label]
        assert max(drawn[i] for i in members) - min(drawn[i] for i in members) <= 1
    seen = Counter()
    for index, repeat in zip(indices, repeats, strict=True):  # the repeat number counts earlier draws
        assert repeat == seen[index]
        seen[index] += 1
    again = BalancedSampler(targets, world, 0, seed=3)
    again.set_epoch(epoch)
    assert again.shard() == shards[0]  # a function of (seed, epoch) alone


class Labels(Dataset):
    """Yields (index, augmentation seed) as the image: what a batch would be made of."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key):
        index, seed = key
        return torch.tensor([index, seed % 2**62]), self.targets[index]


def test_balanced_loader_shards_over_ranks_resumes_mid_epoch_and_seeds_each_copy_apart():
    dataset = Labels([0] * 20 + [1] * 4)  # 5:1
    config = LoaderConfig(batch_size=4, workers=0, seed=1, balanced=True)
    loaders = [build_loader(dataset, config, train=True, rank=r, world_size=2) for r in range(2)]
    drawn = []
    for loader in loaders:
        loader.sampler.set_epoch(2)
        drawn += [tuple(row) for images, _ in loader for row in images.tolist()]
    assert len(drawn) == 24 and Counter(dataset.targets[i] for i, _ in drawn) == {0: 12, 1: 12}
    copies = Counter(i for i, _ in drawn)
    assert max(copies.values()) == 3 and len(set(drawn)) == 24  # every copy of an image has its own seed
    loaders[1].sampler.set_epoch(2)
    whole = list(loaders[1].sampler)
    loaders[1].sampler.set_epoch(2, start=4)  # one batch of this rank's shard done
    assert list(loaders[1].sampler) == whole[4:] and len(loaders[1]) == 2
    loaders[1].sampler.set_epoch(3)
    assert list(loaders[1].sampler) != whole


@given(entropy=st.lists(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=7), min_size=1, max_size=20))
def test_the_array_seed_sequence_is_numpys_word_for_word(entropy):
    for length in {len(row) for row in entropy}:
        rows = [row for row in entropy if len(row) == length]
        expected = [np.random.SeedSequence(row).generate_state(3, np.uint32).tolist() for row in rows]
        assert generate_states(np.array(rows, dtype=np.uint64), 3).tolist() == expected


@given(
    seed=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, 2**70)),
    epoch=st.integers(0, 1000),
    draws=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3)), max_size=40),
)
def test_a_whole_epochs_seeds_at_once_are_each_samples_own(seed, epoch, draws):
    indices, repeats = [index for index, _ in draws], [repeat for _, repeat in draws]
    assert sample_seeds(seed, epoch, indices, repeats) == [sample_seed(seed, epoch, i, r) for i, r in draws]
