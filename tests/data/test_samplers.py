"""Samplers (data/samplers.py): shards, epochs, grouping, resume."""
import itertools

import pytest

from zenith_det.data import (
    InferenceSampler,
    TrainingBatchSampler,
    TrainingSampler,
)
from data_fixtures import (  # noqa: F401  (fixtures, autouse ones included)
    isolated,
)

# pycocotools' own numpy-2 deprecation, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 7, 10, 13])
def test_inference_shards_cover_every_index_once(size):
    for world_size in range(1, 5):
        shards = [list(InferenceSampler(size, rank=r, world_size=world_size)) for r in range(world_size)]
        assert list(itertools.chain(*shards)) == list(range(size))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_training_sampler_ranks_split_each_epoch():
    size, world_size = 10, 3
    first_epoch = []
    for rank in range(world_size):
        stream = TrainingSampler(size, seed=4, rank=rank, world_size=world_size)
        count = len(range(rank, size, world_size))
        first_epoch += [index for index, _ in itertools.islice(stream, count)]
    assert sorted(first_epoch) == list(range(size))
    one = list(itertools.islice(TrainingSampler(size, seed=4, rank=1, world_size=3), 40))
    assert list(itertools.islice(TrainingSampler(size, seed=4, rank=1, world_size=3, start=25), 15)) == one[25:]
    other_seed = list(itertools.islice(TrainingSampler(size, seed=5, rank=1, world_size=3), 40))
    assert one != other_seed


def test_grouped_batches_share_orientation_and_resume():
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    full = list(itertools.islice(TrainingBatchSampler(len(groups), 3, seed=2, group_ids=groups), 12))
    for batch in full:
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1
    resumed = list(itertools.islice(TrainingBatchSampler(len(groups), 3, seed=2, group_ids=groups, start_iter=7), 5))
    assert resumed == full[7:]
