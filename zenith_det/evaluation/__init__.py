"""COCO evaluation (detectron2-compatible numbers); knows nothing of the trainer."""
from .coco_evaluation import RESULTS_FILE, COCOEvaluator, build_coco_evaluator, merge_predictions
from .coco_metrics import (
    BACKENDS,
    TASKS,
    check_task_results,
    derive_metrics,
    evaluate_results_json,
    load_coco_gt,
    load_results,
    run_cocoeval,
)
from .conversion import encode_masks, instances_to_coco_json
from .inference import inference_on_dataset
from .printing import format_per_category_table, format_results_table, jsonable_results

__all__ = [
    "BACKENDS",
    "TASKS",
    "RESULTS_FILE",
    "COCOEvaluator",
    "build_coco_evaluator",
    "merge_predictions",
    "evaluate_results_json",
    "check_task_results",
    "run_cocoeval",
    "derive_metrics",
    "load_coco_gt",
    "load_results",
    "encode_masks",
    "instances_to_coco_json",
    "inference_on_dataset",
    "format_results_table",
    "format_per_category_table",
    "jsonable_results",
]
