"""Datasets and loaders from a config.

The training stream is resumable: build_detection_train_loader(cfg, start_iter=k)
yields exactly the batches a loader started at 0 yields from its k-th on, for any
DATALOADER.NUM_WORKERS, because batches are decided on indices (samplers.py) and
every random transform draws from a per-sample seed carried with the index.
"""
import bisect
import gc
import logging
import os

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..config.architectures import architecture_targets
from ..errors import UserError
from ..utils import comm
from .catalog import get_dataset_paths, register_datasets_from_cfg
from .coco import CocoDetection, json_identity
from .samplers import InferenceSampler, TrainingBatchSampler, aspect_ratio_group_ids
from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "build_detection_train_loader",
    "build_detection_test_loader",
    "get_detection_dataset",
    "get_dataset_metadata",
    "metadata_from_cfg",
    "targets_for_architecture",
    "training_data_identity",
    "SeededConcatDataset",
    "collate",
]

logger = logging.getLogger(__name__)

# When SEED < 0 the model's seed is random, but the data order must still be
# reproducible from the config alone for a resumed run to continue it.
_DEFAULT_DATA_SEED = 0

_DATASET_CACHE = {}


def targets_for_architecture(meta_architecture):
    """{"with_masks": bool, "with_keypoints": bool} for a MODEL.META_ARCHITECTURE."""
    return architecture_targets(meta_architecture)


def get_detection_dataset(name, cfg=None, is_train=True):
    """The CocoDetection for a dataset name, cached per process.

    Training views load the targets cfg.MODEL.META_ARCHITECTURE needs and honour
    DATALOADER.FILTER_EMPTY_ANNOTATIONS; evaluation views keep every image and
    load boxes only (the evaluator reads ground truth from metadata.json_file).
    """
    if cfg is not None:
        register_datasets_from_cfg(cfg)
    json_file, image_root = get_dataset_paths(name)
    options = {"with_masks": False, "with_keypoints": False, "filter_empty": False}
    if is_train:
        options["filter_empty"] = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS if cfg is not None else True
        if cfg is not None:
            options.update(targets_for_architecture(cfg.MODEL.META_ARCHITECTURE))
            options["largest_input"] = (max(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN)
    mtime = os.stat(json_file).st_mtime_ns if os.path.isfile(json_file) else None
    key = (name, json_file, image_root, mtime, tuple(sorted(options.items())))
    if key not in _DATASET_CACHE:
        _DATASET_CACHE[key] = CocoDetection(json_file, image_root, name=name, **options)
    return _DATASET_CACHE[key]


def get_dataset_metadata(name, cfg=None):
    """DatasetMetadata (classes, id maps, keypoints) of a dataset name, without a loader."""
    return get_detection_dataset(name, cfg, is_train=False).metadata


def metadata_from_cfg(cfg):
    """Metadata the model is built for: that of DATASETS.TRAIN (which must agree), else DATASETS.TEST."""
    field, names = ("DATASETS.TRAIN", list(cfg.DATASETS.TRAIN)) if cfg.DATASETS.TRAIN else \
        ("DATASETS.TEST", list(cfg.DATASETS.TEST))
    if not names:
        raise UserError("DATASETS.TRAIN and DATASETS.TEST are both empty; name a dataset so the model "
                        "knows its classes")
    metas = [get_dataset_metadata(n, cfg) for n in names]
    _check_same_categories(field, names, metas)
    return metas[0]


def training_data_identity(cfg):
    """{name: {"json": path, "bytes": size, "sha256": digest}} of each DATASETS.TRAIN annotation file."""
    register_datasets_from_cfg(cfg)
    identity = {}
    for name in cfg.DATASETS.TRAIN:
        json_file, _ = get_dataset_paths(name)
        identity[name] = {"json": os.path.abspath(json_file), **json_identity(json_file)}
    return identity


def _check_same_categories(field, names, metas):
    for name, meta in zip(names[1:], metas[1:]):
        if not meta.same_categories(metas[0]):
            raise UserError(f"{field}: datasets {names[0]} and {name} have different categories or keypoints; "
                            "datasets trained together must share them")


class SeededConcatDataset(Dataset):
    """Several datasets end to end, indexed by (index, sample_seed).

    The seed drives the transforms, so a sample's augmentation does not depend
    on which worker loads it.
    """

    def __init__(self, datasets, transforms=None):
        self.datasets = list(datasets)
        self.transforms = transforms
        self.cumulative_sizes = []
        total = 0
        for d in self.datasets:
            total += len(d)
            self.cumulative_sizes.append(total)

    def __len__(self):
        return self.cumulative_sizes[-1] if self.cumulative_sizes else 0

    def aspect_ratios(self):
        return [r for d in self.datasets for r in d.aspect_ratios()]

    def __getitem__(self, key):
        index, seed = key
        which = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[which - 1] if which else 0)
        image, target = self.datasets[which][local]
        if self.transforms is not None:
            image, target = self.transforms(image, target, torch.Generator().manual_seed(seed))
        return image, target


def collate(batch):
    """(images, targets) as lists: detection images differ in size, so nothing is stacked."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _train_transforms(cfg, metadata):
    flip = cfg.INPUT.RANDOM_FLIP
    if flip == "none":
        return None
    if flip == "horizontal":
        return Compose([RandomHorizontalFlip(0.5, metadata.keypoint_flip_indices)])
    raise UserError(f"INPUT.RANDOM_FLIP {flip!r} is not supported; use 'horizontal' or 'none'")


def _num_workers(cfg):
    n = cfg.DATALOADER.NUM_WORKERS
    if not isinstance(n, int) or n < 0:
        raise UserError(f"DATALOADER.NUM_WORKERS must be an integer >= 0, got {n!r}")
    return n


def freeze_inherited_objects(worker_id=None):
    """DataLoader worker_init_fn: keep the cyclic GC off what the worker inherited.

    A forked worker shares the main process's memory until it writes to it, and
    a full collection writes to every object it walks (the interpreter's, torch's,
    the trainer's: tens of MB). Frozen objects are never walked; they are not
    garbage in the worker anyway. gc.freeze() only relinks the generation lists.
    """
    gc.freeze()


def build_detection_train_loader(cfg, start_iter=0):
    """Endless per-rank batches (images: list[Tensor], targets: list[dict]).

    Each process gets SOLVER.IMS_PER_BATCH // world_size images per batch, from
    the concatenation of DATASETS.TRAIN, grouped by orientation when
    DATALOADER.ASPECT_RATIO_GROUPING, flipped per INPUT.RANDOM_FLIP. The stream
    is a function of (SEED, rank, world_size, iteration) only; `start_iter`
    skips batches at the index level, without reading their images.
    """
    world_size, rank = comm.get_world_size(), comm.get_rank()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world_size:
        raise UserError(f"SOLVER.IMS_PER_BATCH={total} must be a positive multiple of the number of processes "
                        f"({world_size}); it is the global batch, split evenly over processes")
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise UserError("DATASETS.TRAIN is empty; name at least one dataset to train on")
    num_workers = _num_workers(cfg)

    datasets = [get_detection_dataset(n, cfg, is_train=True) for n in names]
    _check_same_categories("DATASETS.TRAIN", names, [d.metadata for d in datasets])
    dataset = SeededConcatDataset(datasets, _train_transforms(cfg, datasets[0].metadata))
    if not len(dataset):
        raise UserError(f"DATASETS.TRAIN has no images to train on: {', '.join(d.json_file for d in datasets)} "
                        "lists none; add images to the json or train on another dataset")
    group_ids = aspect_ratio_group_ids(dataset.aspect_ratios()) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    seed = cfg.SEED if cfg.SEED >= 0 else _DEFAULT_DATA_SEED
    batch_sampler = TrainingBatchSampler(len(dataset), total // world_size, seed=seed, group_ids=group_ids,
                                         start_iter=start_iter, rank=rank, world_size=world_size)
    logger.info("Training on %s: %d images, %d per process per batch, starting at batch %d",
                ", ".join(names), len(dataset), total // world_size, start_iter)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        worker_init_fn=freeze_inherited_objects,
        # Worker seeds come from here rather than the global RNG, so building the
        # loader leaves torch's global random state (model init, ...) untouched.
        generator=torch.Generator().manual_seed(seed),
    )


def build_detection_test_loader(cfg, dataset_name):
    """Batches (images, targets) over this process's shard of `dataset_name`, in order.

    TEST.IMS_PER_BATCH images per batch and per process; every image is in
    exactly one process's shard. Targets carry image_id (and boxes, labels).
    """
    batch_size = cfg.TEST.IMS_PER_BATCH
    if batch_size <= 0:
        raise UserError(f"TEST.IMS_PER_BATCH must be >= 1, got {batch_size}")
    dataset = get_detection_dataset(dataset_name, cfg, is_train=False)
    sampler = InferenceSampler(len(dataset))
    num_workers = _num_workers(cfg)
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=False),
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=freeze_inherited_objects,
        generator=torch.Generator().manual_seed(0),
    )
