"""Run COCOeval on COCO-format results and derive detectron2's metric dict.

The one implementation behind COCOEvaluator, tools/eval_coco.py and the
benchmark, for both backends: pycocotools and faster-coco-eval. Its input is
checked first (validation.py): a bad result or ground truth is a one-line
UserError, never a traceback from the backend or a silently wrong AP.
"""
import contextlib
import copy
import io
import logging
import math
import os
from collections import OrderedDict
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import UserError
from .conversion import compress_segmentation
from .predictions_file import is_predictions_file, results_for_ground_truth
from .validation import check_gt, check_results, check_results_list, image_sizes, read_json

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval")
TASKS = ("bbox", "segm", "keypoints")

# name -> (IoU threshold or None for 0.50:0.95, area range label), in detectron2's order.
_DET_METRICS = OrderedDict(
    [("AP", (None, "all")), ("AP50", (0.5, "all")), ("AP75", (0.75, "all")),
     ("APs", (None, "small")), ("APm", (None, "medium")), ("APl", (None, "large"))]
)
_KPT_METRICS = OrderedDict(
    [("AP", (None, "all")), ("AP50", (0.5, "all")), ("AP75", (0.75, "all")),
     ("APm", (None, "medium")), ("APl", (None, "large"))]
)
TASK_METRICS = {"bbox": _DET_METRICS, "segm": _DET_METRICS, "keypoints": _KPT_METRICS}

# The fields each task's COCOeval reads. segm drops "bbox" because loadRes would
# otherwise take the box's area for the small/medium/large split instead of the
# mask's (detectron2 does the same); keypoints keeps it, so its area is the box's.
_TASK_FIELDS = {
    "bbox": ("image_id", "category_id", "bbox", "score"),
    "segm": ("image_id", "category_id", "segmentation", "score"),
    "keypoints": ("image_id", "category_id", "bbox", "keypoints", "score"),
}


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress to stdout; keep it in the debug log instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        logger.debug(buf.getvalue().rstrip())


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"TEST.EVALUATOR_BACKEND is {backend!r}; use one of {', '.join(BACKENDS)}")


def coco_api(backend: str) -> SimpleNamespace:
    """The backend's COCO and COCOeval classes."""
    check_backend(backend)
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return SimpleNamespace(COCO=COCO, COCOeval=COCOeval, name=backend)
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise UserError(
            "TEST.EVALUATOR_BACKEND is faster_coco_eval but the package is missing: "
            "pip install faster-coco-eval (or pip install -e .[fast_eval]), "
            "or set TEST.EVALUATOR_BACKEND pycocotools"
        ) from None

    def make_eval(gt, dt, iou_type):
        return COCOeval_faster(gt, dt, iou_type, print_function=logger.debug)

    return SimpleNamespace(COCO=COCO, COCOeval=make_eval, name=backend)


def _fill_gt_defaults(dataset: dict, source: str) -> None:
    """COCOeval reads every annotation's 'iscrowd' and 'area'; where a json leaves them out,
    use the data layer's defaults (an object, the box's area), as training did, instead
    of a KeyError halfway through the evaluation."""
    for i, ann in enumerate(dataset["annotations"]):
        if ann.get("iscrowd") is None:
            ann["iscrowd"] = 0
        if ann.get("area") is None:
            box = ann.get("bbox")
            try:
                ann["area"] = float(box[2]) * float(box[3])
            except (TypeError, ValueError, IndexError, KeyError):
                raise UserError(f"{source}: annotations[{i}] has no 'area' and no box [x, y, width, height] to take "
                                "it from; give each annotation its area in pixels") from None


def load_coco_gt(gt, backend: str = "pycocotools"):
    """`gt` (a json path, a COCO-format dict, or a COCO object of either backend) as the backend's COCO.

    An object of the other backend is rebuilt from a deep copy of its dataset:
    both APIs write into the annotation dicts while evaluating.
    """
    api = coco_api(backend)
    source = "the ground truth"
    if isinstance(gt, api.COCO):
        check_gt(gt.dataset, getattr(gt, "zenith_source", source))
        return gt
    if hasattr(gt, "dataset") and hasattr(gt, "createIndex"):
        source = getattr(gt, "zenith_source", source)
        check_gt(gt.dataset, source)
        gt = copy.deepcopy(gt.dataset)
    elif isinstance(gt, (str, os.PathLike)):
        source = os.fspath(gt)
        gt = read_json(source, "ground-truth json")
        check_gt(gt, source)
    elif isinstance(gt, dict):
        check_gt(gt, source)
        gt = copy.deepcopy(gt)
    else:
        raise TypeError(f"ground truth must be a json path, a dict or a COCO object, not {type(gt).__name__}")
    _fill_gt_defaults(gt, source)
    coco = api.COCO()
    coco.dataset = gt
    with _quiet():
        coco.createIndex()
    coco.zenith_source = source  # messages about results name the ground truth they were checked against
    return coco


def load_results(results, coco_gt=None) -> List[Dict]:
    """A COCO results list from a json path or a list (a path's content is checked to be a list of objects).

    With `coco_gt`, a json that carries its own images and categories (tools/predict.py's) is read
    too: its images are matched to the ground truth's by file name (predictions_file.py)."""
    if isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        results = read_json(path, "results json")
        if coco_gt is not None and is_predictions_file(results):
            return results_for_ground_truth(results, coco_gt, path)
        check_results_list(results, path)
    return results


def _task_results(coco_gt, results: List[Dict], task: str) -> List[Dict]:
    """Fresh dicts (loadRes writes area/id/iscrowd into them) with the fields the task reads."""
    keep = _TASK_FIELDS[task]
    if task == "keypoints" and not all("bbox" in r for r in results):
        # loadRes takes the area from the box only if the first result has one, and then
        # fails on any without; with boxes on some only, all take it from the keypoints.
        keep = tuple(k for k in keep if k != "bbox")
    out = [{k: r[k] for k in keep if k in r} for r in results]
    if task == "segm":
        # loadRes takes only RLEs with string counts; polygons and run-length lists are valid
        # COCO too, and get the same encoding COCOeval gives the ground truth's.
        sizes = None
        for r in out:
            seg = r["segmentation"]
            if not (isinstance(seg, dict) and isinstance(seg["counts"], str)):
                sizes = sizes or image_sizes(coco_gt, getattr(coco_gt, "zenith_source", "the ground truth"))
                r["segmentation"] = compress_segmentation(seg, *sizes[r["image_id"]])
    return out


def keypoint_category_ids(coco_gt) -> List[int]:
    """Categories evaluated for keypoints: those with a keypoint schema.

    pycocotools would take every category and fail on annotations without
    keypoints; COCO's own keypoint json has only 'person', where both agree.
    """
    cats = coco_gt.dataset.get("categories", [])
    ids = [c["id"] for c in cats if c.get("keypoints")]
    if not ids:
        ids = {a["category_id"] for a in coco_gt.dataset.get("annotations", []) if "keypoints" in a}
    return sorted(ids)


def _load_dt(api, coco_gt, results: List[Dict]):
    if results:
        with _quiet():
            return coco_gt.loadRes(results)
    # pycocotools' loadRes fails on an empty list; "nothing detected" is still a
    # valid result that scores 0 wherever there is ground truth.
    dt = api.COCO()
    dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with _quiet():
        dt.createIndex()
    return dt


def run_cocoeval(
    coco_gt,
    results: List[Dict],
    task: str,
    backend: str = "pycocotools",
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
    max_dets: int = 100,
    source: str = "the results",
    check: bool = True,
):
    """COCOeval after evaluate() and accumulate() (summarize() is left to the caller).

    `coco_gt` must be the backend's COCO (see load_coco_gt); `results` is a
    COCO results list, which is not modified. Bad results raise UserError
    naming `source` (the results file), the entry and the field; check=False
    skips that for results check_task_results has passed already.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    api = coco_api(backend)
    if check:
        check_task_results(coco_gt, results, task, source, kpt_oks_sigmas)
    results = _task_results(coco_gt, results, task)
    if task == "keypoints":
        params_cat_ids = keypoint_category_ids(coco_gt)
        keep = set(params_cat_ids)
        results = [r for r in results if r["category_id"] in keep]

    coco_dt = _load_dt(api, coco_gt, results)
    with _quiet():
        ev = api.COCOeval(coco_gt, coco_dt, task)
    if task == "keypoints":
        ev.params.catIds = params_cat_ids
        if kpt_oks_sigmas is not None and len(kpt_oks_sigmas):
            ev.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
    else:
        # COCOeval's maxDets for keypoints is [20]; only the detection tasks take ours.
        ev.params.maxDets = sorted({1, 10, int(max_dets)})
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    ev.zenith_max_dets = int(max_dets) if task != "keypoints" else ev.params.maxDets[-1]
    return ev


def check_task_results(
    coco_gt, results: List[Dict], task: str, source: str = "the results",
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
) -> None:
    """UserError, before any COCOeval runs, for results `task` cannot evaluate: it names `source`,
    the first bad entry and its field. Callers evaluating several tasks check them all first,
    so that a bad mask is not found only after minutes of box evaluation."""
    keypoint_shape = None
    if task == "keypoints":
        cat_ids = keypoint_category_ids(coco_gt)
        if not cat_ids:
            raise UserError("the ground truth has no keypoint annotations, so keypoints cannot be evaluated")
        num_keypoints = _gt_num_keypoints(coco_gt, cat_ids)
        given = kpt_oks_sigmas is not None and len(kpt_oks_sigmas)
        _check_num_sigmas(num_keypoints, len(kpt_oks_sigmas) if given else _COCOEVAL_NUM_SIGMAS)
        keypoint_shape = (num_keypoints, set(cat_ids))
    check_results(results, coco_gt, task, source, keypoint_shape)


# Both backends' COCOeval default to COCO's 17 person keypoint sigmas.
_COCOEVAL_NUM_SIGMAS = 17


def _gt_num_keypoints(coco_gt, cat_ids) -> Optional[int]:
    """Keypoints per instance in the ground truth: of its first keypoint annotation, else of its schema."""
    cat_ids = set(cat_ids)
    anns, cats = coco_gt.dataset["annotations"], coco_gt.dataset["categories"]
    gt_ann = next((a for a in anns if a.get("category_id") in cat_ids and "keypoints" in a), None)
    if gt_ann is not None:
        return len(gt_ann["keypoints"]) // 3
    names = next((c["keypoints"] for c in cats if c["id"] in cat_ids and c.get("keypoints")), None)
    return len(names) if names else None


def _check_num_sigmas(num_keypoints: Optional[int], num_sigmas: int) -> None:
    if num_keypoints is not None and num_keypoints != num_sigmas:
        raise UserError(
            f"keypoint counts disagree (TEST.KEYPOINT_OKS_SIGMAS: {num_sigmas}, the ground truth: {num_keypoints}); "
            "set TEST.KEYPOINT_OKS_SIGMAS (--kpt-oks-sigmas of tools/eval_coco.py) to one sigma per keypoint "
            "(empty means COCO's 17)"
        )


def _mean_precision(ev, iou_thr: Optional[float], area: str, cat_index: Optional[int] = None) -> float:
    """pycocotools' _summarize(ap=1) on the precision array, in percent; NaN where it says -1."""
    p = ev.params
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    if iou_thr is not None:
        precision = precision[np.where(np.isclose(np.asarray(p.iouThrs), iou_thr))[0]]
    aind = list(p.areaRngLbl).index(area)
    mind = list(p.maxDets).index(getattr(ev, "zenith_max_dets", p.maxDets[-1]))
    if cat_index is None:
        s = precision[:, :, :, aind, mind]
    else:
        s = precision[:, :, cat_index, aind, mind]
    s = s[s > -1]
    # The same operations as pycocotools then detectron2 (mean, then x100), so the
    # numbers are bit-identical to stats[i] * 100.
    return float(np.mean(s) * 100) if s.size else float("nan")


def derive_metrics(ev, task: str) -> Dict[str, float]:
    """detectron2's metric dict from an accumulated COCOeval: AP, AP50, ... and AP-<category> (percent)."""
    metrics = {name: _mean_precision(ev, thr, area) for name, (thr, area) in TASK_METRICS[task].items()}
    cat_ids = list(ev.params.catIds)
    if len(cat_ids) > 1:
        cats = ev.cocoGt.cats
        # Index by params.catIds: faster-coco-eval and our keypoints setup may
        # evaluate fewer categories than the json lists.
        for k, cat_id in enumerate(cat_ids):
            name = cats.get(cat_id, {}).get("name", str(cat_id))
            metrics[f"AP-{name}"] = _mean_precision(ev, None, "all", cat_index=k)
    if not all(math.isfinite(v) for v in metrics.values()):
        logger.info("%s: some metrics cannot be computed (no ground truth in that range) and are NaN", task)
    return metrics


def evaluate_results_json(
    gt_json,
    results_json: Union[str, os.PathLike, List[Dict]],
    task: str,
    backend: str = "pycocotools",
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
    max_dets: int = 100,
    source: Optional[str] = None,
) -> Dict[str, float]:
    """detectron2-style metrics (percent) of a COCO results file or list against a ground truth.

    `gt_json` is a path, a dict or a COCO object; an empty results list scores 0
    (NaN for area ranges without ground truth). `source` names a results list in
    messages (a path names itself).
    """
    coco_gt = load_coco_gt(gt_json, backend)
    if source is None:
        source = os.fspath(results_json) if isinstance(results_json, (str, os.PathLike)) else "the results"
    results = load_results(results_json)
    ev = run_cocoeval(coco_gt, results, task, backend, kpt_oks_sigmas, max_dets, source)
    return derive_metrics(ev, task)
