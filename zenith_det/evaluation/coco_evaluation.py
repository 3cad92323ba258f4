"""COCO AP of a model's predictions, collected batch by batch on every rank."""
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from ..utils import comm
from ..utils.fileio import atomic_write
from .coco_metrics import (
    TASKS,
    check_backend,
    check_task_results,
    coco_api,
    derive_metrics,
    evaluate_results_json,
    load_coco_gt,
    run_cocoeval,
)
from .conversion import infer_tasks, instances_to_coco_json
from .printing import format_results_table

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"

__all__ = [
    "COCOEvaluator", "build_coco_evaluator", "evaluate_results_json", "merge_predictions", "write_results_json", "RESULTS_FILE",
]

# Results per json.dumps call when writing them: a few MB of text at a time.
_JSON_CHUNK = 10000


def write_results_json(results: List[Dict], path: str) -> None:
    """json.dump(results, f), byte for byte, atomically: json.dump (not one-shot) runs json's
    pure-Python encoder, several times slower than json.dumps' C one on chunks of the list."""
    def write(f):
        f.write(b"[")
        for start in range(0, len(results), _JSON_CHUNK):
            if start:
                f.write(b", ")
            f.write(json.dumps(results[start:start + _JSON_CHUNK])[1:-1].encode("ascii"))
        f.write(b"]")

    atomic_write(path, write)


def merge_predictions(per_rank: Iterable[List[Dict]]) -> List[Dict]:
    """All ranks' per-image predictions, one entry per image id, sorted by image id.

    A padding sampler (torch's DistributedSampler) repeats images to even out
    the ranks; counting a repeat twice would add false positives, so only the
    first copy of an image is kept.
    """
    by_image: Dict[int, Dict] = {}
    duplicates = 0
    for predictions in per_rank:
        for p in predictions:
            if p["image_id"] in by_image:
                duplicates += 1
                continue
            by_image[p["image_id"]] = p
    if duplicates:
        logger.info("dropped %d duplicate image predictions (a padding sampler?)", duplicates)
    return [by_image[i] for i in sorted(by_image)]


class COCOEvaluator:
    """detectron2's COCOEvaluator for torchvision-convention outputs.

    process() converts each image's output to COCO results on the rank that
    produced it; evaluate() gathers them to rank 0, which runs COCOeval and
    returns {"bbox": {...}, "segm": {...}, "keypoints": {...}} in percent; the
    other ranks return an empty dict.

    Args:
        gt_json_or_COCO: the dataset's COCO-format ground truth (path, dict or COCO object).
        contiguous_id_to_category_id: model label (1..K) -> the json's category id, or None
            to drop that label's detections (a category the json lacks, see data/categories.py).
        tasks: subset of ("bbox", "segm", "keypoints"); None infers them from the
            outputs (bbox always, segm with masks, keypoints with keypoints).
        output_dir: if given, rank 0 writes the results there as RESULTS_FILE.
        backend: "pycocotools" or "faster_coco_eval" (TEST.EVALUATOR_BACKEND).
        kpt_oks_sigmas: one per keypoint; None or empty for COCO's 17.
        max_dets: detections per image that count for bbox/segm AP (TEST.DETECTIONS_PER_IMAGE).

    It takes pasted "masks" or unpasted "mask_probs" (pastes_masks: inference_on_dataset
    then asks our models for the latter, see conversion.instances_to_coco_json).
    """

    pastes_masks = True

    def __init__(
        self,
        gt_json_or_COCO,
        contiguous_id_to_category_id: Mapping[int, int],
        tasks: Optional[Sequence[str]] = None,
        output_dir: Optional[str] = None,
        backend: str = "pycocotools",
        kpt_oks_sigmas: Optional[Sequence[float]] = None,
        max_dets: int = 100,
    ):
        check_backend(backend)
        coco_api(backend)  # a missing faster-coco-eval fails now, on every rank, not after inference
        if tasks is not None:
            unknown = set(tasks) - set(TASKS)
            if unknown:
                raise ValueError(f"unknown tasks {sorted(unknown)}; expected a subset of {TASKS}")
            tasks = tuple(t for t in TASKS if t in set(tasks))
        self._tasks = tasks
        self._gt_source = gt_json_or_COCO
        self._coco_gt = None  # loaded by rank 0 at the first evaluate(): the others never need it
        self._mapping = {int(k): None if v is None else int(v) for k, v in contiguous_id_to_category_id.items()}
        self._output_dir = output_dir
        self._backend = backend
        self._kpt_oks_sigmas = list(kpt_oks_sigmas) if kpt_oks_sigmas is not None and len(kpt_oks_sigmas) else None
        self._max_dets = int(max_dets)
        self.reset()

    def reset(self) -> None:
        self._predictions: List[Dict] = []
        self._seen_tasks: set = set()

    def process(self, image_ids: Sequence, outputs: Sequence[Mapping]) -> None:
        """Convert one batch: image_ids[i] (int or 0-dim tensor) and the model's outputs[i]."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids but {len(outputs)} outputs")
        for image_id, output in zip(image_ids, outputs):
            image_id = int(image_id)
            self._seen_tasks |= infer_tasks(output)
            self._predictions.append(
                {"image_id": image_id, "instances": instances_to_coco_json(output, image_id, self._mapping)}
            )

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        gathered = comm.gather((self._predictions, self._seen_tasks), dst=0)
        if not comm.is_main_process():
            return OrderedDict()
        predictions = merge_predictions(p for p, _ in gathered)
        seen_tasks = set().union(*(t for _, t in gathered))
        tasks = self._tasks or tuple(t for t in TASKS if t in seen_tasks) or ("bbox",)

        coco_results = [inst for p in predictions for inst in p["instances"]]
        if not coco_results:
            logger.warning("the model detected nothing on %d images", len(predictions))
        source = "the model's detections"
        if self._output_dir:
            path = os.path.join(self._output_dir, RESULTS_FILE)
            write_results_json(coco_results, path)
            logger.info("wrote %d detections to %s", len(coco_results), path)
            source = path  # a bad detection (a NaN score, say) is then named by its index in this file

        if self._coco_gt is None:
            start = time.perf_counter()
            self._coco_gt = load_coco_gt(self._gt_source, self._backend)
            logger.info("loaded the ground truth in %.2fs", time.perf_counter() - start)

        for task in tasks:  # all of them before the first (slow) evaluation
            check_task_results(self._coco_gt, coco_results, task, source, self._kpt_oks_sigmas)
        results = OrderedDict()
        for task in tasks:
            start = time.perf_counter()
            ev = run_cocoeval(
                self._coco_gt, coco_results, task, self._backend, self._kpt_oks_sigmas, self._max_dets, source,
                check=False,
            )
            results[task] = derive_metrics(ev, task)
            logger.info("COCOeval %s (%s) took %.2fs", task, self._backend, time.perf_counter() - start)
        logger.info("evaluation results on %d images:\n%s", len(predictions), format_results_table(results))
        return results



def build_coco_evaluator(
    cfg, metadata, output_dir: Optional[str] = None, label_to_category_id: Optional[Mapping[int, Optional[int]]] = None,
) -> COCOEvaluator:
    """The evaluator the TEST.* keys describe, for a dataset's metadata (json_file, contiguous_id_to_category_id).

    `label_to_category_id` (model label -> the json's category id, or None to drop) is how
    the model's labels map to this json's categories (data.categories.match_categories);
    by default the json's own contiguous ids, right only for a model trained on its categories.
    """
    if label_to_category_id is None:
        label_to_category_id = metadata.contiguous_id_to_category_id
    return COCOEvaluator(
        metadata.json_file,
        label_to_category_id,
        output_dir=output_dir,
        backend=cfg.TEST.EVALUATOR_BACKEND,
        kpt_oks_sigmas=list(cfg.TEST.KEYPOINT_OKS_SIGMAS),
        max_dets=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
