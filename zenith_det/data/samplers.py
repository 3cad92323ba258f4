"""Index samplers for training and inference, after detectron2's data/samplers.

The training stream is a pure function of (seed, rank, world_size, position):
the i-th sample of epoch e is randperm(size, seeded from (seed, e))[i], rank r
takes global positions r, r + world_size, ..., and every sample carries its own
seed for the random transforms. Any point of the stream can therefore be rebuilt
from indices alone, which is what makes resuming exact.
"""
import itertools

import torch
from torch.utils.data import Sampler

from ..utils import comm

__all__ = [
    "TrainingSampler",
    "InferenceSampler",
    "AspectRatioGroupedBatchSampler",
    "TrainingBatchSampler",
    "aspect_ratio_group_ids",
    "mix_seed",
]

_MASK64 = (1 << 64) - 1


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values):
    """A well-spread 63-bit seed from integers.

    Plain seed + epoch would make run (seed=1, epoch 0) replay run (seed=0, epoch 1).
    """
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


class TrainingSampler(Sampler):
    """Endless stream of (dataset index, sample seed) for one rank.

    Each epoch is a fresh permutation (or 0..size-1 when not shuffling); the ranks
    interleave over the one global stream, so they stay balanced across epoch
    boundaries and never see the same sample at the same step. `start` skips this
    rank's first `start` samples without generating them.
    """

    def __init__(self, size, seed=0, shuffle=True, rank=None, world_size=None, start=0):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        self.size = size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self.start = start

    def epoch_order(self, epoch):
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(mix_seed(self.seed, 0, epoch))
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self):
        position = self.rank + self.world_size * self.start
        epoch, order = None, None
        while True:
            e, i = divmod(position, self.size)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            yield order[i], mix_seed(self.seed, 1, position)
            position += self.world_size


class InferenceSampler(Sampler):
    """This rank's contiguous shard of range(size), without padding.

    Shard sizes differ by at most one, so every index is evaluated exactly once
    over all ranks (DistributedSampler pads and would count some images twice).
    """

    def __init__(self, size, rank=None, world_size=None):
        self.size = size
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        base, extra = divmod(size, world_size)
        shard_sizes = [base + int(r < extra) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        self._indices = range(begin, begin + shard_sizes[rank])

    def __iter__(self):
        return iter(self._indices)

    def __len__(self):
        return len(self._indices)


def aspect_ratio_group_ids(aspect_ratios):
    """0 for landscape or square (width >= height), 1 for portrait."""
    return [0 if r >= 1 else 1 for r in aspect_ratios]


class AspectRatioGroupedBatchSampler(Sampler):
    """Batches whose images all share a group, as detectron2's AspectRatioGroupedDataset.

    It works on the sampler's items rather than on loaded images, so the batches
    are known without reading a pixel and do not depend on worker timing.
    """

    def __init__(self, sampler, group_ids, batch_size):
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self):
        buckets = [[] for _ in range(max(self.group_ids, default=0) + 1)]
        for item in self.sampler:
            index = item[0] if isinstance(item, tuple) else item
            bucket = buckets[self.group_ids[index]]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]


class TrainingBatchSampler(Sampler):
    """Endless per-rank batches of (index, sample seed), starting at batch `start_iter`.

    Batch k is the same whether the stream starts at 0 or at k: without grouping
    it starts the sample stream at k * batch_size directly; with grouping, which
    samples fall in batch k depends on all before it, so the grouping is replayed
    on indices only (no image is read) up to k.
    """

    def __init__(self, size, batch_size, seed=0, group_ids=None, start_iter=0, shuffle=True,
                 rank=None, world_size=None):
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.group_ids = group_ids
        self.start_iter = start_iter
        self.shuffle = shuffle
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def _samples(self, start=0):
        return TrainingSampler(self.size, self.seed, self.shuffle, self.rank, self.world_size, start=start)

    def __iter__(self):
        if self.group_ids is None:
            return self._plain_batches()
        batches = AspectRatioGroupedBatchSampler(self._samples(), self.group_ids, self.batch_size)
        return itertools.islice(iter(batches), self.start_iter, None)

    def _plain_batches(self):
        stream = iter(self._samples(start=self.start_iter * self.batch_size))
        while True:
            yield list(itertools.islice(stream, self.batch_size))
