"""Run COCOeval on COCO-format results and derive detectron2's metric dict.

The one implementation behind COCOEvaluator, tools/eval_coco.py and the
benchmark, for both backends: pycocotools and faster-coco-eval.
"""
import contextlib
import copy
import io
import json
import logging
import math
import os
from collections import OrderedDict
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import UserError

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
_TASK_REQUIRED = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


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


def load_coco_gt(gt, backend: str = "pycocotools"):
    """`gt` (a json path, a COCO-format dict, or a COCO object of either backend) as the backend's COCO.

    An object of the other backend is rebuilt from a deep copy of its dataset:
    both APIs write into the annotation dicts while evaluating.
    """
    api = coco_api(backend)
    if isinstance(gt, api.COCO):
        return gt
    if hasattr(gt, "dataset") and hasattr(gt, "createIndex"):
        gt = copy.deepcopy(gt.dataset)
    elif isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        gt = _read_json(path, "ground-truth json")
        if not isinstance(gt, dict) or "images" not in gt:
            raise UserError(f"{path}: not a COCO-format ground truth (no 'images' list)")
    elif isinstance(gt, dict):
        gt = copy.deepcopy(gt)
    else:
        raise TypeError(f"ground truth must be a json path, a dict or a COCO object, not {type(gt).__name__}")
    coco = api.COCO()
    coco.dataset = gt
    with _quiet():
        coco.createIndex()
    return coco


def _read_json(path, what: str):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid json ({e})") from None


def load_results(results) -> List[Dict]:
    """A COCO results list from a json path or a list."""
    if isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        results = _read_json(path, "results json")
        if not isinstance(results, list):
            raise UserError(f"{path}: a COCO results file is a json list of detections, got a {type(results).__name__}")
    return results


def _task_results(results: List[Dict], task: str) -> List[Dict]:
    field = _TASK_REQUIRED[task]
    missing = sum(1 for r in results if field not in r)
    if missing:
        raise UserError(f"{missing} of {len(results)} results have no '{field}', so they cannot be evaluated for {task}")
    keep = _TASK_FIELDS[task]
    # Fresh dicts: loadRes writes area/id/iscrowd into them.
    return [{k: r[k] for k in keep if k in r} for r in results]


def _check_ids(coco_gt, results: List[Dict]) -> None:
    img_ids = set(coco_gt.getImgIds())
    bad = sorted({r["image_id"] for r in results} - img_ids)
    if bad:
        raise UserError(
            f"{len(bad)} result image ids are not in the ground truth (e.g. {bad[:5]}): "
            "the results and the ground-truth json must come from the same dataset"
        )
    cat_ids = set(coco_gt.getCatIds())
    bad = sorted({r["category_id"] for r in results} - cat_ids)
    if bad:
        raise UserError(
            f"result category ids {bad[:10]} are not in the ground truth's categories {sorted(cat_ids)[:10]}: "
            "results must use the json's category ids"
        )


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
):
    """COCOeval after evaluate() and accumulate() (summarize() is left to the caller).

    `coco_gt` must be the backend's COCO (see load_coco_gt); `results` is a
    COCO results list, which is not modified.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    api = coco_api(backend)
    results = _task_results(results, task)
    _check_ids(coco_gt, results)
    params_cat_ids = None
    if task == "keypoints":
        params_cat_ids = keypoint_category_ids(coco_gt)
        if not params_cat_ids:
            raise UserError("the ground truth has no keypoint annotations, so keypoints cannot be evaluated")
        keep = set(params_cat_ids)
        results = [r for r in results if r["category_id"] in keep]

    coco_dt = _load_dt(api, coco_gt, results)
    with _quiet():
        ev = api.COCOeval(coco_gt, coco_dt, task)
    if task == "keypoints":
        ev.params.catIds = params_cat_ids
        if kpt_oks_sigmas is not None and len(kpt_oks_sigmas):
            ev.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
        _check_num_keypoints(coco_gt, results, params_cat_ids, len(ev.params.kpt_oks_sigmas))
    else:
        # COCOeval's maxDets for keypoints is [20]; only the detection tasks take ours.
        ev.params.maxDets = sorted({1, 10, int(max_dets)})
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    ev.zenith_max_dets = int(max_dets) if task != "keypoints" else ev.params.maxDets[-1]
    return ev


def _check_num_keypoints(coco_gt, results, cat_ids, num_sigmas: int) -> None:
    cat_ids = set(cat_ids)
    gt_ann = next((a for a in coco_gt.dataset.get("annotations", []) if a["category_id"] in cat_ids and "keypoints" in a), None)
    counts = {"TEST.KEYPOINT_OKS_SIGMAS": num_sigmas}
    if gt_ann is not None:
        counts["the ground truth"] = len(gt_ann["keypoints"]) // 3
    if results:
        counts["the predictions"] = len(results[0]["keypoints"]) // 3
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise UserError(
            f"keypoint counts disagree ({found}); set TEST.KEYPOINT_OKS_SIGMAS to one sigma per keypoint "
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
) -> Dict[str, float]:
    """detectron2-style metrics (percent) of a COCO results file or list against a ground truth.

    `gt_json` is a path, a dict or a COCO object; an empty results list scores 0
    (NaN for area ranges without ground truth).
    """
    coco_gt = load_coco_gt(gt_json, backend)
    results = load_results(results_json)
    ev = run_cocoeval(coco_gt, results, task, backend, kpt_oks_sigmas, max_dets)
    return derive_metrics(ev, task)
