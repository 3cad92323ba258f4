"""Data layer: COCO-format datasets, the dataset catalog, samplers and loaders.

Knows nothing of the trainer; the engine, model builder and evaluator use:
  build_detection_train_loader(cfg, start_iter)  endless, resumable per-rank batches
  build_detection_test_loader(cfg, name)          this rank's shard, in order
  get_detection_dataset(name, cfg, is_train)      the CocoDetection (`.ids`, `.metadata`, `.target(i)`)
  get_dataset_metadata(name, cfg) / metadata_from_cfg(cfg)   num_classes, keypoints, id maps
"""
from .build import (
    SeededConcatDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    collate,
    get_dataset_metadata,
    get_detection_dataset,
    metadata_from_cfg,
    targets_for_architecture,
    training_data_identity,
)
from .catalog import dataset_root, get_dataset_paths, list_datasets, register_coco_dataset, register_datasets_from_cfg
from .coco import (
    CocoDetection,
    DatasetError,
    DatasetMetadata,
    load_coco_json,
    load_coco_table,
    metadata_from_categories,
    pil_image_to_tensor,
    read_image,
)
from .samplers import (
    AspectRatioGroupedBatchSampler,
    InferenceSampler,
    TrainingBatchSampler,
    TrainingSampler,
    aspect_ratio_group_ids,
)
from .synthetic import SYNTHETIC_DATASETS, ensure_synthetic_dataset, generate_synthetic_coco
from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "AspectRatioGroupedBatchSampler",
    "CocoDetection",
    "Compose",
    "DatasetError",
    "DatasetMetadata",
    "InferenceSampler",
    "RandomHorizontalFlip",
    "SYNTHETIC_DATASETS",
    "SeededConcatDataset",
    "TrainingBatchSampler",
    "TrainingSampler",
    "aspect_ratio_group_ids",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "collate",
    "dataset_root",
    "ensure_synthetic_dataset",
    "generate_synthetic_coco",
    "get_dataset_metadata",
    "get_dataset_paths",
    "get_detection_dataset",
    "list_datasets",
    "load_coco_json",
    "load_coco_table",
    "metadata_from_categories",
    "metadata_from_cfg",
    "pil_image_to_tensor",
    "read_image",
    "register_coco_dataset",
    "register_datasets_from_cfg",
    "targets_for_architecture",
    "training_data_identity",
]
