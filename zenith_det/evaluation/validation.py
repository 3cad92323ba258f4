"""Evaluation input checked before COCOeval sees it: one line naming the file, the entry and the field.

pycocotools and faster-coco-eval take whatever they are given: a NaN score sorts
anywhere and changes AP, a box of negative size gets a negative area, an RLE of
another size scores IoU -1, garbage RLE counts are read past their end. Every
check is vectorised (a list comprehension and numpy per field) on the path where
all is well; only when something is wrong does a Python loop look for the first
bad entry, so the checks cost a small part of COCOeval's time.
"""
import itertools
import json
import math
import numbers
import os
from operator import itemgetter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..utils.polygon_bounds import first_polygon_outside, point_outside, polygon_bound_fix
from .rle_check import first_bad_rle_string

_MISSING = object()
_TASK_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}

_RULES = {
    "score": "a detection's score must be a finite number",
    "image_id": "it must be the integer id of an image in the ground truth",
    "category_id": "it must be the integer id of a category in the ground truth",
    "bbox": "a box is [x, y, width, height]: 4 finite numbers, width and height >= 0",
    "segmentation": "a mask is an RLE {'size': [height, width], 'counts': ...} (pycocotools.mask.encode) "
                    "or polygons [[x1, y1, x2, y2, x3, y3, ...], ...]",
    "keypoints": "keypoints are [x1, y1, v1, x2, y2, v2, ...]: 3 numbers per keypoint, x and y finite",
}


def describe(value) -> str:
    """A json value's kind, for messages: 'null', 'a string', 'an object', ..."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _show(value) -> str:
    """A value as a message quotes it: numbers as they are, anything else with its json kind."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return f"{str(bool(value)).lower()} (a boolean)"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return text if _is_number(value) else f"{text} ({describe(value)})"


def read_json(path, what: str):
    """A json file's content, or a UserError naming the file and what is wrong with it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder, not a json file")
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if raw.startswith(b"\x1f\x8b"):
        raise UserError(f"{path}: the {what} is gzip-compressed; gunzip it and pass the .json")
    try:
        text = raw.decode("utf-8-sig")  # json is UTF-8; a BOM some editors add is harmless
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: the {what} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "save it as UTF-8 json") from None
    if not text.strip():
        hint = "; [] means no detections" if "results" in what else ""
        raise UserError(f"{path}: the {what} is empty, not json{hint}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: the {what} is not valid json ({e.msg} at line {e.lineno}, "
                        f"column {e.colno})") from None


def check_results_list(results, source: str) -> None:
    """A results file's content is a list of objects."""
    if not isinstance(results, list):
        hint = ""
        if isinstance(results, dict) and "annotations" in results:
            hint = ("; this looks like a ground truth (pass it as --gt) or results wrapped in an object "
                    "(keep the list)")
        raise UserError(f"{source}: a COCO results file is a json list of detections "
                        f"[{{\"image_id\": ..., \"category_id\": ..., \"score\": ..., ...}}, ...], "
                        f"but this one holds {describe(results)}{hint}")
    if not set(map(type, results)) <= {dict}:
        i = next(i for i, r in enumerate(results) if not isinstance(r, dict))
        raise UserError(f"{source}: results[{i}] is {describe(results[i])}, not a detection object "
                        "{\"image_id\": ..., \"category_id\": ..., \"score\": ..., ...}")


# ----------------------------------------------------------------------------- ground truth


def check_gt(dataset, source: str) -> None:
    """The top level of a COCO ground truth: images, categories and annotations, with integer ids."""
    if not isinstance(dataset, dict):
        results_like = isinstance(dataset, list) and dataset and isinstance(dataset[0], dict) and "score" in dataset[0]
        hint = "; this looks like a results file (pass it as --results)" if results_like else ""
        raise UserError(f"{source}: a COCO ground truth is a json object with 'images', 'annotations' and "
                        f"'categories', but this one holds {describe(dataset)}{hint}")
    for field in ("images", "categories", "annotations"):
        if field not in dataset:
            what = ("give the json with the annotations ('annotations': [] if no image has objects); an image-info "
                    "file like COCO test-dev's cannot be evaluated") if field == "annotations" else \
                f"the ground truth must list its {field}"
            raise UserError(f"{source}: no '{field}'; {what}")
        if not isinstance(dataset[field], list):
            raise UserError(f"{source}: '{field}' is {describe(dataset[field])}, not a list")
        if field != "annotations" and not dataset[field]:
            raise UserError(f"{source}: '{field}' is empty; the ground truth must list its {field}")
        entries = dataset[field]
        if not set(map(type, entries)) <= {dict}:
            i = next(i for i, e in enumerate(entries) if not isinstance(e, dict))
            raise UserError(f"{source}: {field}[{i}] is {describe(entries[i])}, not an object")
    for field in ("images", "categories"):
        ids = [e.get("id", _MISSING) for e in dataset[field]]
        if not _all_ints(ids):
            i = next(i for i, v in enumerate(ids) if _int_problem(v))
            has = "has no 'id'" if ids[i] is _MISSING else f"has id {_show(ids[i])}"
            raise UserError(f"{source}: {field}[{i}] {has}; {field[:-1]} ids must be integers")
        if len(set(ids)) != len(ids):
            seen = {}
            i = next(i for i, v in enumerate(ids) if seen.setdefault(v, i) != i)
            raise UserError(f"{source}: {field}[{i}] has id {ids[i]}, as {field}[{seen[ids[i]]}] has; "
                            f"{field[:-1]} ids must be unique")
    _check_gt_polygons(dataset, source)


def _check_gt_polygons(dataset, source: str) -> None:
    """The ground truth's polygons lie near their image (polygon_bounds.py): COCOeval hands them to
    pycocotools' C rasteriser, which a point at 1e8 px crashes. Annotations on an image without a
    size are left alone: pycocotools stops at the missing size before it rasterises anything."""
    sizes = {}
    for img in dataset["images"]:
        h, w = img.get("height"), img.get("width")
        if _is_number(h, integer=True) and _is_number(w, integer=True) and h > 0 and w > 0:
            sizes[img["id"]] = (h, w)
    anns = dataset["annotations"]
    rows = [i for i, a in enumerate(anns) if type(a.get("segmentation")) is list
            and type(a.get("image_id")) is int and a["image_id"] in sizes]
    # What pycocotools would rasterise as polygons; it reads numeric strings too, and drops an odd last number.
    polys = [(i, p[:len(p) - len(p) % 2]) for i in rows for p in anns[i]["segmentation"] if type(p) in (list, tuple)]
    if not polys:
        return
    fix = "polygon coordinates are numbers x1, y1, x2, y2, ..."
    lengths = np.fromiter((len(p) for _, p in polys), np.int64, len(polys))
    try:
        coords = np.fromiter(itertools.chain.from_iterable(p for _, p in polys), np.float64, int(lengths.sum()))
    except (TypeError, ValueError, OverflowError):
        i, v = next(((i, v) for i, p in polys for v in p if not _as_float(v)), (polys[0][0], None))
        raise UserError(f"{source}: annotations[{i}] (id {anns[i].get('id')}) has {_show(v)} in its "
                        f"'segmentation'; {fix}") from None
    owner = [i for i, _ in polys]
    h, w = np.array([sizes[anns[i]["image_id"]] for i in owner], np.float64).reshape(-1, 2).T
    outside = first_polygon_outside(coords, lengths, w, h)
    if outside is not None:
        k, x, y = outside
        i = owner[k]
        raise UserError(f"{source}: annotations[{i}] (id {anns[i].get('id')}) has a 'segmentation' "
                        f"{point_outside(x, y, w[k], h[k])}; {polygon_bound_fix(w[k], h[k])}")


def _as_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError, OverflowError):
        return False


def image_sizes(coco_gt, gt_source: str) -> Dict[int, Tuple[int, int]]:
    """image id -> (height, width), which RLE results must match."""
    sizes = {}
    for j, img in enumerate(coco_gt.dataset["images"]):
        h, w = img.get("height"), img.get("width")
        if not (_is_number(h, integer=True) and _is_number(w, integer=True) and h > 0 and w > 0):
            raise UserError(f"{gt_source}: images[{j}] (id {img['id']}) needs positive integer 'height' and "
                            f"'width' (has {_show(h)} and {_show(w)}) to evaluate masks")
        sizes[img["id"]] = (int(h), int(w))
    return sizes


# ----------------------------------------------------------------------------- results


def check_results(results: List[Dict], coco_gt, task: str, source: str,
                  keypoint_shape: Optional[Tuple[int, set]] = None) -> None:
    """Raise UserError for the first result (by index) with a malformed field for `task`, else for the
    first that does not fit the ground truth: an unknown id, an RLE of another size than its image,
    or, with keypoint_shape = (keypoints per instance, the categories evaluated), a wrong count."""
    check_results_list(results, source)
    if not results:
        return
    gt_source = getattr(coco_gt, "zenith_source", "the ground truth")
    fields = ["image_id", "category_id", "score", _TASK_FIELD[task]]
    if task == "keypoints" and all("bbox" in r for r in results):
        fields.append("bbox")  # then COCOeval takes the area (small/medium/large) from it
    values = {f: [r.get(f, _MISSING) for r in results] for f in fields}
    _raise_first([_first_problem(source, f, v, *_CHECKS[f]) for f, v in values.items()])

    image_ids, category_ids = values["image_id"], values["category_id"]
    problems = [
        _first_unknown(source, "image_id", image_ids, coco_gt.imgs,
                       f"is not an image of {gt_source}: the results and the ground truth must come from the "
                       "same dataset"),
        _first_unknown(source, "category_id", category_ids, coco_gt.cats,
                       f"is not a category of {gt_source} (ids {_few(sorted(coco_gt.cats))}): results must use "
                       "the json's category ids"),
    ]
    if not any(problems) and task == "segm":
        sizes = image_sizes(coco_gt, gt_source)
        problems.append(_first_wrong_mask(source, gt_source, values["segmentation"], image_ids, sizes))
        problems.append(_first_polygon_outside(source, values["segmentation"], image_ids, sizes))
    if not any(problems) and task == "keypoints" and keypoint_shape is not None and keypoint_shape[0] is not None:
        num, cats = keypoint_shape
        pairs = enumerate(zip(values["keypoints"], category_ids))
        i = next((i for i, (kp, c) in pairs if len(kp) != 3 * num and c in cats), None)
        if i is not None:
            problems.append((i, f"{source}: results[{i}]['keypoints'] has {len(values['keypoints'][i])} numbers, "
                                f"but {gt_source} has {num} keypoints per instance, so it must have {3 * num}"))
    _raise_first(problems)


def _raise_first(problems: Sequence[Optional[Tuple[int, str]]]) -> None:
    found = [p for p in problems if p is not None]
    if found:
        raise UserError(min(found, key=lambda p: p[0])[1])


def _few(values) -> str:
    return str(list(values[:10]))[:-1] + (", ...]" if len(values) > 10 else "]")


def _first_problem(source, field, values, all_fine: Callable, problem: Callable) -> Optional[Tuple[int, str]]:
    if all_fine(values):
        return None
    for i, v in enumerate(values):
        why = problem(v)
        if why is not None:
            where = f"{source}: results[{i}]"
            if v is _MISSING:
                return i, f"{where} has no '{field}'; {_RULES[field]}"
            return i, f"{where}['{field}'] {why}; {_RULES[field]}"
    return None


def _is_number(v, integer: bool = False) -> bool:
    # bool is an int to Python; to COCO it is a mistake
    kind = numbers.Integral if integer else numbers.Real
    return isinstance(v, kind) and not isinstance(v, (bool, np.bool_))


def _finite(values: list) -> bool:
    try:
        return bool(np.isfinite(np.array(values, dtype=np.float64)).all())
    except OverflowError:  # an int beyond float's range; the slow check lets ints pass
        return False


def _finite_number(v) -> bool:
    return _is_number(v) and (isinstance(v, numbers.Integral) or math.isfinite(v))


def _all_ints(values) -> bool:
    return set(map(type, values)) <= {int}


def _int_problem(v) -> Optional[str]:
    return None if _is_number(v, integer=True) else f"is {_show(v)}"


def _all_finite(values) -> bool:
    return set(map(type, values)) <= {int, float} and _finite(values)


def _score_problem(v) -> Optional[str]:
    return None if _finite_number(v) else f"is {_show(v)}"


def _all_boxes(boxes) -> bool:
    if not (set(map(type, boxes)) <= {list} and set(map(len, boxes)) == {4}):
        return False
    flat = list(itertools.chain.from_iterable(boxes))
    if not set(map(type, flat)) <= {int, float}:
        return False
    arr = np.array(flat, dtype=np.float64).reshape(-1, 4)
    return bool(np.isfinite(arr).all() and (arr[:, 2:] >= 0).all())


def _box_problem(b) -> Optional[str]:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        return f"is {_show(b)}" if not isinstance(b, (list, tuple)) else f"has {len(b)} numbers"
    for v in b:
        if not _finite_number(v):
            return f"holds {_show(v)}"
    if b[2] < 0 or b[3] < 0:
        return f"is {list(b)}: its width or height is negative"
    return None


def _all_keypoints(kps) -> bool:
    if not set(map(type, kps)) <= {list}:
        return False
    lengths = set(map(len, kps))
    if len(lengths) != 1 or next(iter(lengths)) % 3 or not next(iter(lengths)):
        return False  # the slow check names the entry (or the length check against the gt does)
    flat = list(itertools.chain.from_iterable(kps))
    if not set(map(type, flat)) <= {int, float}:
        return False
    xy = np.array(flat, dtype=np.float64).reshape(-1, 3)[:, :2]  # COCOeval reads x and y only
    return bool(np.isfinite(xy).all())


def _keypoints_problem(kp) -> Optional[str]:
    if not isinstance(kp, (list, tuple)):
        return f"is {_show(kp)}"
    if not kp or len(kp) % 3:
        return f"has {len(kp)} numbers, not a multiple of 3"
    for k, v in enumerate(kp):
        if not (_finite_number(v) if k % 3 < 2 else _is_number(v)):
            return f"holds {_show(v)} at position {k}"
    return None


def _all_string_rles(segms) -> bool:
    """Every mask an RLE with string counts and a [height, width] of ints (checked against the gt later)."""
    if not set(map(type, segms)) <= {dict}:
        return False
    counts = [s.get("counts") for s in segms]
    sizes = [s.get("size") for s in segms]
    if not (set(map(type, counts)) <= {str} and set(map(type, sizes)) <= {list} and set(map(len, sizes)) == {2}):
        return False
    return set(map(type, itertools.chain.from_iterable(sizes))) <= {int}


def _segm_problem(s) -> Optional[str]:
    if isinstance(s, dict):
        size, counts = s.get("size"), s.get("counts", _MISSING)
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(_is_number(v, integer=True) and v > 0 for v in size)):
            return f"has size {_show(size)}, not [height, width]"
        if isinstance(counts, (str, bytes)):
            return None
        if isinstance(counts, list) and all(_is_number(v, integer=True) and v >= 0 for v in counts):
            return None
        return "has counts " + ("missing" if counts is _MISSING else _show(counts)) + \
            ", neither a string nor a list of run lengths"
    if not isinstance(s, list):
        return f"is {_show(s)}"
    if not s:
        return "is an empty list of polygons"
    if all(_is_number(v) for v in s):
        return "is a flat list of numbers, not a list of polygons"
    for poly in s:
        if not isinstance(poly, (list, tuple)):
            return f"holds {_show(poly)} instead of a polygon"
        if len(poly) < 6 or len(poly) % 2:
            return f"holds a polygon of {len(poly)} numbers; one needs x, y pairs of at least 3 points"
        bad = next((v for v in poly if not _finite_number(v)), _MISSING)
        if bad is not _MISSING:
            return f"holds a polygon with {_show(bad)}"
    return None


def _first_unknown(source, field, values, known, why) -> Optional[Tuple[int, str]]:
    found = list(map(known.__contains__, values))
    if all(found):
        return None
    i = found.index(False)
    n = len(found) - sum(found)
    return i, f"{source}: results[{i}]['{field}'] {values[i]} {why} ({n} of {len(values)} results have such ids)"


def _first_wrong_mask(source, gt_source, segms, image_ids, sizes) -> Optional[Tuple[int, str]]:
    """The first RLE whose size is not its image's, or whose runs do not cover it (polygons fit any size)."""
    is_rle = [type(s) is dict for s in segms]
    rle = range(len(segms)) if all(is_rle) else [i for i, flag in enumerate(is_rle) if flag]
    if not rle:
        return None
    masks = segms if len(rle) == len(segms) else [segms[i] for i in rle]
    ids = image_ids if len(rle) == len(segms) else [image_ids[i] for i in rle]
    expected = _pairs(map(sizes.__getitem__, ids), len(rle))
    try:
        wrong = np.flatnonzero((_pairs(map(itemgetter("size"), masks), len(rle)) != expected).any(1))
    except OverflowError:  # a size beyond int64: find it in Python
        wrong = np.array([k for k, m in enumerate(masks) if list(m["size"]) != expected[k].tolist()])
    if wrong.size:
        i = rle[wrong[0]]
        h, w = expected[wrong[0]]
        return i, (f"{source}: results[{i}]['segmentation'] has size {list(segms[i]['size'])}, but image "
                   f"{image_ids[i]} of {gt_source} is [{h}, {w}] (height, width); "
                   "encode each mask at its image's size")
    pixels = expected.prod(1)
    counts = list(map(itemgetter("counts"), masks))
    text = [k for k, c in enumerate(counts) if type(c) is not list]  # str, or bytes from pycocotools in memory
    strings = [c if type(c) is str else c.decode("ascii", "replace") for c in map(counts.__getitem__, text)]
    bad = first_bad_rle_string(strings, pixels[text])
    problems = [] if bad is None else [(text[bad[0]], bad[1])]
    short = next((k for k, c in enumerate(counts) if type(c) is list and sum(c) != pixels[k]), None)
    if short is not None:
        problems.append((short, f"its runs cover {sum(counts[short])} pixels, not height*width = {pixels[short]}"))
    if not problems:
        return None
    k, why = min(problems)
    return rle[k], (f"{source}: results[{rle[k]}]['segmentation'] is not a valid RLE: {why}; "
                    "encode masks with pycocotools.mask.encode")


def _first_polygon_outside(source, segms, image_ids, sizes) -> Optional[Tuple[int, str]]:
    """The first polygon result with a point far outside its image (polygon_bounds.py): their
    RLE is made by pycocotools' C rasteriser, which a point at 1e8 px crashes. Polygons are
    well formed here (_segm_problem): lists of finite numbers, x, y pairs."""
    rows = [i for i, s in enumerate(segms) if type(s) is list]
    polys = [(i, p) for i in rows for p in segms[i]]
    if not polys:
        return None
    lengths = np.fromiter((len(p) for _, p in polys), np.int64, len(polys))
    coords = np.fromiter(itertools.chain.from_iterable(p for _, p in polys), np.float64, int(lengths.sum()))
    owner = [i for i, _ in polys]
    h, w = np.array([sizes[image_ids[i]] for i in owner], np.float64).reshape(-1, 2).T
    outside = first_polygon_outside(coords, lengths, w, h)
    if outside is None:
        return None
    k, x, y = outside
    i = owner[k]
    return i, (f"{source}: results[{i}]['segmentation'] has a {point_outside(x, y, w[k], h[k])} "
               f"(image {image_ids[i]}); {polygon_bound_fix(w[k], h[k])}")


def _pairs(pairs, n: int) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(pairs), dtype=np.int64, count=2 * n).reshape(n, 2)


# field -> (is every value fine? vectorised; why one value is not, or None)
_CHECKS = {
    "image_id": (_all_ints, _int_problem),
    "category_id": (_all_ints, _int_problem),
    "score": (_all_finite, _score_problem),
    "bbox": (_all_boxes, _box_problem),
    "segmentation": (_all_string_rles, _segm_problem),
    "keypoints": (_all_keypoints, _keypoints_problem),
}
