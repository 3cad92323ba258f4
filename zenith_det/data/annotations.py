"""A COCO json read once, checked, and packed into flat numpy arrays (`CocoTable`).

Why arrays: COCO train2017 held as json dicts (or pycocotools' COCO) is some GB
of small Python objects. DataLoader workers are forked, and every object a worker
touches, by a refcount or by the cyclic GC's bookkeeping in a full collection,
gets its memory page copied; over a long run each worker ends up with its own
copy. A numpy buffer holds no per-element objects, so workers share it for good.

Every check runs here, once, vectorised where the data is large. A problem is one
UserError line naming the json, the entry (index and id), the field and the fix.
"""
import contextlib
import ctypes
import gc
import itertools
import json
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from pycocotools import mask as mask_util

from ..errors import UserError
from ..utils.polygon_bounds import first_polygon_outside, point_outside, polygon_bound_fix

__all__ = ["CocoTable", "read_coco_json", "pack_coco", "compressed_rle_totals", "release_freed_memory",
           "SEGM_NONE", "SEGM_POLYGONS", "SEGM_RLE", "SEGM_SHORT"]

# What an annotation's segmentation became.
SEGM_NONE, SEGM_POLYGONS, SEGM_RLE, SEGM_SHORT = 0, 1, 2, 3  # SHORT: only polygons of < 3 points

_SEGM_HINT = ("give polygons [[x1, y1, x2, y2, ...], ...] or an RLE {'size': [height, width], 'counts': "
              "run lengths summing to height*width, or pycocotools' compressed string}")


@dataclass
class CocoTable:
    """One COCO json as arrays. Images are sorted by id; annotation rows by image, then json order.

    Rows of image i's annotations: ann_offsets[i]:ann_offsets[i + 1]. Variable-length
    fields stay in json order in one flat array, and each row has [begin, end) into
    it: row r's polygons are poly_begin[r]:poly_end[r], polygon p's coordinates
    coords[coord_offsets[p]:coord_offsets[p + 1]] (polygons of fewer than 3 points
    are dropped, as pycocotools rejects them); its compressed RLE counts
    rle_bytes[rle_begin[r]:rle_end[r]]; its keypoints kp_values[kp_begin[r]:kp_end[r]].
    """

    json_file: str
    categories: list  # [{"id", "name", "keypoints"?, "skeleton"?}], as in the json (small)
    image_id: np.ndarray
    width: np.ndarray
    height: np.ndarray
    name_bytes: np.ndarray
    name_offsets: np.ndarray
    ann_offsets: np.ndarray
    ann_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray  # (N, 4) float64, x y w h as in the json
    area: np.ndarray  # float32; w * h where the json has none
    iscrowd: np.ndarray  # bool
    segm_kind: np.ndarray  # int8, SEGM_*
    poly_begin: np.ndarray
    poly_end: np.ndarray
    coord_offsets: np.ndarray
    coords: np.ndarray  # int32 hundredths of a pixel where exact, else float64
    rle_begin: np.ndarray
    rle_end: np.ndarray
    rle_bytes: np.ndarray
    kp_begin: np.ndarray
    kp_end: np.ndarray
    kp_values: np.ndarray  # float64

    @property
    def num_images(self):
        return len(self.image_id)

    @property
    def num_annotations(self):
        return len(self.ann_id)

    def file_name(self, i):
        return self.name_bytes[self.name_offsets[i]:self.name_offsets[i + 1]].tobytes().decode("utf-8")

    def image_of_rows(self):
        """The image position of every annotation row."""
        return np.repeat(np.arange(self.num_images), np.diff(self.ann_offsets))

    def polygons(self, r):
        """float64 x1, y1, x2, ... arrays, exactly the json's values."""
        c, coords = self.coord_offsets, self.coords
        if coords.dtype == np.int32:  # hundredths of a pixel, see _centipixels
            return [coords[c[p]:c[p + 1]] / 100 for p in range(self.poly_begin[r], self.poly_end[r])]
        return [coords[c[p]:c[p + 1]] for p in range(self.poly_begin[r], self.poly_end[r])]

    def rle(self, r, height, width):
        counts = self.rle_bytes[self.rle_begin[r]:self.rle_end[r]].tobytes()
        return {"size": [int(height), int(width)], "counts": counts}

    def keypoints(self, r):
        return self.kp_values[self.kp_begin[r]:self.kp_end[r]]


# ---------------------------------------------------------------- reading


def read_coco_json(json_file):
    """The parsed json; UserError if it is not readable UTF-8 JSON."""
    try:
        with open(json_file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read {json_file} ({e.strerror or e}); fix its permissions or the path") from None
    if not raw.strip():
        raise UserError(f"{json_file} is empty; regenerate or re-download the annotation file")
    # json reads UTF-16/32 too (their NUL bytes follow a pattern); NULs in what looks like UTF-8 mean binary.
    if b"\0" in raw[:4096] and json.detect_encoding(raw[:4]) == "utf-8":
        raise UserError(f"{json_file} is a binary file, not JSON text; point DATASETS.REGISTER at the "
                        "annotation .json (not an image or an archive)")
    try:
        with gc_paused():
            return json.loads(raw)
    except UnicodeDecodeError as e:
        raise UserError(f"{json_file} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start} does not "
                        "decode); COCO json is UTF-8: re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    except json.JSONDecodeError as e:
        where = f"{e.msg} (line {e.lineno} column {e.colno})"
        if not raw.rstrip().endswith((b"}", b"]")):
            raise UserError(f"{json_file} is not valid JSON and does not end with '}}': it looks truncated "
                            f"({where}); download or write it again") from None
        raise UserError(f"{json_file} is not valid JSON: {where}; fix the file or regenerate it") from None
    except RecursionError:
        raise UserError(f"{json_file} is not valid COCO JSON: it nests too deeply; regenerate it") from None


def release_freed_memory():
    """Hand memory freed by a parse back to the OS (glibc keeps it otherwise: ~0.5 GB for COCO train)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to do
        pass


@contextlib.contextmanager
def gc_paused():
    """No cyclic GC inside: parsing and packing create millions of objects and no cycles,
    and each automatic full collection would walk the whole parsed json again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------- checks


def _short(value, limit=60):
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Entries:
    """Names entries in messages: `annotation id 7 (annotations[3])`."""

    def __init__(self, json_file, key, what, entries):
        self.json_file, self.key, self.what, self.entries = json_file, key, what, entries
        self.ids = None

    def name(self, i):
        if self.ids is not None:
            return f"{self.what} id {self.ids[i]} ({self.key}[{i}])"
        ident = self.entries[i].get("id") if isinstance(self.entries[i], dict) else None
        if isinstance(ident, int) and not isinstance(ident, bool):
            return f"{self.what} id {ident} ({self.key}[{i}])"
        return f"{self.key}[{i}]"

    def fail(self, i, problem, fix):
        return UserError(f"{self.json_file}: {self.name(i)} {problem}; {fix}")


def _require_dicts(entries, names, fields):
    for i, entry in enumerate(entries):
        if type(entry) is not dict:
            raise names.fail(i, f"is {_short(entry)}, not an object", f"every entry of '{names.key}' is a JSON object")
    for field in fields:
        missing = [i for i, entry in enumerate(entries) if field not in entry]
        if missing:
            raise names.fail(missing[0], f"has no '{field}'", f"add it (every {names.what} needs "
                             f"{', '.join(repr(f) for f in fields)})")


def _is_int(v):
    return type(v) is int


def _is_number(v):
    return type(v) in (int, float) and np.isfinite(v)


def _first_bad(values, ok):
    # Only reached once numpy has refused the column, so some entry is bad; 0 is a fallback.
    return next((i for i, v in enumerate(values) if not ok(v)), 0)


def _int_column(values, names, field, fix):
    """int64 array of `values`, or the first entry that is not an integer."""
    if not values:
        return np.zeros(0, np.int64)
    try:
        arr = np.array(values)
        if arr.dtype.kind == "i" and arr.ndim == 1:
            return arr.astype(np.int64, copy=False)
    except (ValueError, OverflowError):
        pass
    i = _first_bad(values, lambda v: _is_int(v) and -2 ** 63 <= v < 2 ** 63)
    raise names.fail(i, f"has '{field}' {_short(values[i])}, not an integer", fix)


def _float_column(values, names, field, fix):
    """float64 array of finite numbers, or the first bad entry."""
    if not values:
        return np.zeros(0)
    try:
        arr = np.array(values)
        if arr.ndim == 1 and arr.dtype.kind in "if" and np.isfinite(arr).all():
            return arr.astype(np.float64, copy=False)
    except (ValueError, OverflowError):
        pass
    i = _first_bad(values, _is_number)
    raise names.fail(i, f"has '{field}' {_short(values[i])}, not a finite number", fix)


def _check_unique(ids, names, where):
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(same):
        first, second = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        raise UserError(f"{names.json_file}: {names.what} id {ids[first]} appears twice in '{where}' "
                        f"({where}[{first}] and {where}[{second}]); ids must be unique: renumber one of them")


# ---------------------------------------------------------------- packing


def pack_coco(data, json_file):
    """CocoTable of a parsed COCO json, after checking every field the data layer reads."""
    with gc_paused():
        return _pack(data, json_file)


def _pack(data, json_file):
    if not isinstance(data, dict):
        raise UserError(f"{json_file} is not a COCO annotation file: its top level is a "
                        f"{type(data).__name__}, not an object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{json_file} is not a COCO annotation file: it has no '{key}' list "
                            "(COCO json needs 'images', 'annotations' and 'categories')")
    categories = _pack_categories(json_file, data["categories"])
    image_id, width, height, name_bytes, name_offsets = _pack_images(json_file, data["images"])
    return _pack_annotations(json_file, data["annotations"], categories, image_id, width, height,
                             name_bytes, name_offsets)


def _pack_categories(json_file, cats):
    names = _Entries(json_file, "categories", "category", cats)
    _require_dicts(cats, names, ("id", "name"))
    ids = _int_column([c["id"] for c in cats], names, "id", "category ids are integers")
    names.ids = ids
    _check_unique(ids, names, "categories")
    if not len(ids):
        raise UserError(f"{json_file}: 'categories' is empty; a detection dataset needs at least one category")
    for i, c in enumerate(cats):
        if not isinstance(c["name"], str):
            raise names.fail(i, f"has 'name' {_short(c['name'])}", "category names are strings")
        kps = c.get("keypoints")
        if kps is not None and not (isinstance(kps, list) and all(isinstance(k, str) for k in kps)):
            raise names.fail(i, f"has 'keypoints' {_short(kps)}", "it must be a list of keypoint names")
        skeleton = c.get("skeleton")
        if skeleton is not None and not (isinstance(skeleton, list) and all(
                isinstance(p, list) and len(p) == 2 and all(map(_is_int, p)) for p in skeleton)):
            raise names.fail(i, f"has 'skeleton' {_short(skeleton)}", "it must be a list of [a, b] keypoint numbers")
    return [{k: c[k] for k in ("id", "name", "keypoints", "skeleton") if k in c} for c in cats]


def _pack_images(json_file, images):
    names = _Entries(json_file, "images", "image", images)
    _require_dicts(images, names, ("id", "file_name", "width", "height"))
    ids = _int_column([img["id"] for img in images], names, "id",
                      "image ids are integers: renumber the images and their annotations' image_id")
    names.ids = ids
    _check_unique(ids, names, "images")
    sizes = []
    for field in ("width", "height"):
        size = _int_column([img[field] for img in images], names, field, f"set it to the image's {field} in pixels")
        if len(size) and size.min() < 1:
            i = int(np.argmin(size))
            raise names.fail(i, f"has '{field}' {size[i]}", f"set it to the image's {field} in pixels")
        sizes.append(size)
    file_names = [img["file_name"] for img in images]
    if not all(type(n) is str and n for n in file_names):
        i = _first_bad(file_names, lambda n: type(n) is str and n)
        raise names.fail(i, f"has 'file_name' {_short(file_names[i])}", "it must be the image's path under image_root")
    order = np.argsort(ids, kind="stable")
    encoded = [file_names[i].encode("utf-8", "surrogatepass") for i in order]
    name_bytes, name_offsets = _flat_bytes(encoded)
    return ids[order], sizes[0][order], sizes[1][order], name_bytes, name_offsets


def _flat_bytes(chunks):
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    return np.frombuffer(b"".join(chunks), np.uint8).copy(), offsets


def _pack_annotations(json_file, anns, categories, image_id, width, height, name_bytes, name_offsets):
    names = _Entries(json_file, "annotations", "annotation", anns)
    required = ("id", "image_id", "category_id", "bbox")
    try:
        ids, image_ref, category_ref, boxes = (list(map(itemgetter(k), anns)) for k in required)
    except (KeyError, TypeError):
        _require_dicts(anns, names, required)
        raise
    ids = _int_column(ids, names, "id", "annotation ids are integers: renumber them")
    names.ids = ids
    _check_unique(ids, names, "annotations")
    fix_ref = "fix or remove that annotation"
    image_ref = _int_column(image_ref, names, "image_id", fix_ref)
    image_pos = np.searchsorted(image_id, image_ref).clip(max=max(len(image_id) - 1, 0))
    unknown = np.flatnonzero(image_id[image_pos] != image_ref) if len(image_id) else np.arange(len(anns))
    if len(unknown):
        i = int(unknown[0])
        raise names.fail(i, f"refers to image_id {image_ref[i]}, which is not in 'images'", fix_ref)
    category_id = _int_column(category_ref, names, "category_id", fix_ref)
    unknown = np.flatnonzero(~np.isin(category_id, [c["id"] for c in categories]))
    if len(unknown):
        i = int(unknown[0])
        raise names.fail(i, f"refers to category_id {category_id[i]}, which is not in 'categories'", fix_ref)
    bbox = _box_column(boxes, names)
    area = _area_column(_field(anns, "area"), bbox, names)
    iscrowd = _crowd_column(_field(anns, "iscrowd"), names)
    segm = _pack_segmentations(_field(anns, "segmentation"), names, height[image_pos], width[image_pos])
    kp_begin, kp_end, kp_values = _pack_keypoints(_field(anns, "keypoints"), names)

    # Rows sorted by image (stable: json order within an image, as pycocotools keeps it).
    perm = np.argsort(image_pos, kind="stable")
    ann_offsets = np.zeros(len(image_id) + 1, np.int64)
    np.cumsum(np.bincount(image_pos, minlength=len(image_id)), out=ann_offsets[1:])
    per_row = {k: narrow(v[perm]) for k, v in segm.items() if k not in ("coord_offsets", "coords", "rle_bytes")}
    return CocoTable(
        json_file=json_file, categories=categories, image_id=image_id, width=narrow(width), height=narrow(height),
        name_bytes=name_bytes, name_offsets=narrow(name_offsets), ann_offsets=narrow(ann_offsets),
        ann_id=ids[perm], category_id=narrow(category_id[perm]), bbox=bbox[perm],
        area=area[perm].astype(np.float32), iscrowd=iscrowd[perm],  # area is only ever a float32 target
        coord_offsets=narrow(segm["coord_offsets"]), coords=segm["coords"], rle_bytes=segm["rle_bytes"],
        kp_begin=narrow(kp_begin[perm]), kp_end=narrow(kp_end[perm]), kp_values=kp_values, **per_row)


def narrow(a):
    """An int64 array as int32 when its values fit: half the memory for COCO-sized indices."""
    if a.dtype == np.int64 and (not a.size or (a.min() >= -2 ** 31 and a.max() < 2 ** 31)):
        return a.astype(np.int32)
    return a


def _field(entries, key):
    """entry.get(key) of every entry, in one C-level pass."""
    return list(map(dict.get, entries, itertools.repeat(key)))


def _box_column(boxes, names):
    fix = "COCO boxes are 4 finite numbers [x, y, width, height]"
    ok = (set(map(type, boxes)) <= {list} and set(map(len, boxes)) <= {4}
          and set(map(type, itertools.chain.from_iterable(boxes))) <= {int, float})
    if ok:
        bbox = np.fromiter(itertools.chain.from_iterable(boxes), np.float64, 4 * len(boxes)).reshape(-1, 4)
        if np.isfinite(bbox).all():
            return bbox
    i = _first_bad(boxes, lambda b: type(b) is list and len(b) == 4 and all(map(_is_number, b)))
    raise names.fail(i, f"has 'bbox' {_short(boxes[i])}", fix)


def _area_column(areas, bbox, names):
    area = bbox[:, 2] * bbox[:, 3]  # pycocotools' default too
    given = np.flatnonzero([a is not None for a in areas]) if None in areas else np.arange(len(areas))
    values = [areas[i] for i in given] if len(given) < len(areas) else areas
    area[given] = _float_column(values, _Subset(names, given), "area",
                                "it is the mask's area in pixels; fix or remove it")
    return area


def _crowd_column(crowd, names):
    try:
        ok = set(crowd) <= {0, 1, None}  # True and 1.0 count as 1
    except TypeError:  # an unhashable value
        ok = False
    if not ok:
        i = _first_bad(crowd, lambda v: v is None or (type(v) in (int, bool, float) and v in (0, 1)))
        raise names.fail(i, f"has 'iscrowd' {_short(crowd[i])}", "it is 0 (an object) or 1 (a crowd region)")
    return np.array([c == 1 for c in crowd], bool) if None in crowd else np.array(crowd, dtype=bool)


class _Subset:
    """_Entries for a filtered list: position k is entry index[k]."""

    def __init__(self, names, index):
        self.names, self.index = names, index

    def fail(self, k, problem, fix):
        return self.names.fail(int(self.index[k]), problem, fix)


def _as_float(v):
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _numbers(lists, owners, names, field, fix):
    """All of `lists` as one float64 array (and their lengths), or the first owner with a non-number.

    Strings of numbers pass, as pycocotools reads them too: checking every type
    of COCO's 40M coordinates would cost as much as packing them.
    """
    lengths = np.fromiter(map(len, lists), np.int64, len(lists))
    try:
        values = np.fromiter(itertools.chain.from_iterable(lists), np.float64, int(lengths.sum()))
        if np.isfinite(values).all():
            return values, lengths
    except (TypeError, ValueError):
        pass
    k = _first_bad(lists, lambda seq: all(map(_as_float, seq)))
    bad = next((v for v in lists[k] if not _as_float(v)), lists[k])
    raise names.fail(owners[k], f"has {_short(bad)} in its '{field}'", fix)


def _ranges(owner, n):
    """Per entry 0..n-1, [begin, end) of its items, given each item's owner (ascending)."""
    begin = np.searchsorted(owner, np.arange(n), side="left")
    end = np.searchsorted(owner, np.arange(n), side="right")
    return begin, end


_KIND = {list: SEGM_POLYGONS, dict: SEGM_RLE, type(None): SEGM_NONE}


def _pack_segmentations(segs, names, heights, widths):
    """Per annotation (json order): kind, polygon and RLE ranges; plus the flat polygon and RLE data."""
    n = len(segs)
    types = list(map(type, segs))
    if not set(types) <= set(_KIND):
        i = _first_bad(types, _KIND.__contains__)
        raise names.fail(i, f"has 'segmentation' {_short(segs[i])}", _SEGM_HINT)
    kind = np.fromiter(map(_KIND.__getitem__, types), np.int8, n)

    list_rows = np.flatnonzero(kind == SEGM_POLYGONS)
    lists = [segs[i] for i in list_rows]
    polys = list(itertools.chain.from_iterable(lists))
    if not set(map(type, polys)) <= {list}:
        k = _first_bad(lists, lambda s: all(type(p) is list for p in s))
        flat = all(type(p) in (int, float) for p in lists[k])
        raise names.fail(list_rows[k], f"has a 'segmentation' that is {'one flat list' if flat else _short(lists[k])}",
                         "write polygons as a list of lists, [[x1, y1, x2, y2, ...], ...]")
    poly_owner = np.repeat(list_rows, np.fromiter(map(len, lists), np.int64, len(lists)))
    kind[list_rows[[not s for s in lists]]] = SEGM_NONE  # "segmentation": [] is no mask
    coords, lengths = _numbers(polys, poly_owner, names, "segmentation",
                               "polygon coordinates are finite numbers, x1, y1, x2, y2, ...")
    odd = np.flatnonzero(lengths % 2)
    if len(odd):
        k = int(odd[0])
        raise names.fail(poly_owner[k], f"has a polygon of {lengths[k]} numbers in its 'segmentation'",
                         "a polygon is x, y pairs: remove the stray number")
    outside = first_polygon_outside(coords, lengths, widths[poly_owner], heights[poly_owner])
    if outside is not None:  # before pycocotools ever rasterises it: see polygon_bounds.py
        k, x, y = outside
        w, h = widths[poly_owner[k]], heights[poly_owner[k]]
        raise names.fail(poly_owner[k], f"has a 'segmentation' {point_outside(x, y, w, h)}", polygon_bound_fix(w, h))
    # pycocotools rejects polygons of < 3 points; real COCO has a few beside good ones.
    usable = lengths >= 6
    coords = _centipixels(coords[np.repeat(usable, lengths)])
    coord_offsets = np.zeros(int(usable.sum()) + 1, np.int64)
    np.cumsum(lengths[usable], out=coord_offsets[1:])
    poly_begin, poly_end = _ranges(poly_owner[usable], n)
    kind[(kind == SEGM_POLYGONS) & (poly_begin == poly_end)] = SEGM_SHORT

    rle_rows = np.flatnonzero(kind == SEGM_RLE)
    rles = _pack_rles(segs, rle_rows, names, heights, widths)
    rle_length = np.zeros(n, np.int64)
    rle_length[rle_rows] = [len(c) for c in rles]
    rle_end = np.cumsum(rle_length)
    rle_begin = rle_end - rle_length
    return {"segm_kind": kind, "poly_begin": poly_begin, "poly_end": poly_end, "coord_offsets": coord_offsets,
            "coords": coords, "rle_begin": rle_begin, "rle_end": rle_end,
            "rle_bytes": np.frombuffer(b"".join(rles), np.uint8).copy()}


def _centipixels(coords, chunk=1 << 16):
    """int32 hundredths of a pixel when that is exact (COCO writes 2 decimals), else float64.

    Polygon coordinates are most of a COCO dataset's memory; int32 halves them, and
    value / 100 gives back the very float64 the json held (a correctly rounded division).
    In cache-sized chunks: 40M coordinates in 0.15 s instead of 0.8 s.
    """
    out = np.empty(len(coords), np.int32)
    scaled, back = np.empty(chunk), np.empty(chunk)
    for i in range(0, len(coords), chunk):
        c = coords[i:i + chunk]
        s, b = scaled[:len(c)], back[:len(c)]
        np.rint(np.multiply(c, 100, out=s), out=s)
        if s.max() >= 2 ** 31 or s.min() < -2 ** 31 or not np.array_equal(np.divide(s, 100, out=b), c):
            return coords
        out[i:i + chunk] = s
    return out if len(coords) else coords


def _pack_rles(segs, rows, names, heights, widths):
    """The compressed counts (bytes) of the RLE segmentations of `rows`, after checking them."""
    counts = []
    for r in rows:
        segm, h, w = segs[r], int(heights[r]), int(widths[r])
        if "counts" not in segm or "size" not in segm:
            raise names.fail(r, f"has 'segmentation' {_short(segm)}", _SEGM_HINT)
        size = segm["size"]
        if not (type(size) is list and len(size) == 2 and all(map(_is_int, size))):
            raise names.fail(r, f"has an RLE 'size' {_short(size)}", f"it must be [height, width], [{h}, {w}] here")
        if size != [h, w]:
            raise names.fail(r, f"has an RLE of size {size} on a {h}x{w} image",
                             f"the RLE size must be [height, width] of its image, [{h}, {w}]")
        if type(segm["counts"]) not in (str, list):
            raise names.fail(r, f"has RLE 'counts' {_short(segm['counts'])}",
                             "they must be a list of run lengths or pycocotools' compressed string")
        counts.append(segm["counts"])
    pixels = np.array([heights[r] * widths[r] for r in rows], np.int64)
    fix = "re-encode the mask with pycocotools.mask.encode"
    strings = [k for k, c in enumerate(counts) if type(c) is str]
    for k in strings:
        try:
            counts[k] = counts[k].encode("ascii")
        except UnicodeEncodeError:
            raise names.fail(rows[k], "has RLE 'counts' that are not pycocotools' compressed string "
                             "(non-ASCII text)", fix) from None
    totals = compressed_rle_totals([counts[k] for k in strings])
    bad = np.flatnonzero(totals != pixels[strings])
    if len(bad):
        k = strings[bad[0]]
        problem = "do not decode" if totals[bad[0]] < 0 else f"decode to run lengths summing to {totals[bad[0]]}"
        raise names.fail(rows[k], f"has RLE 'counts' that {problem}, not {pixels[k]} pixels (height*width)", fix)

    # Uncompressed (COCO's crowd regions): checked together, then compressed as pycocotools would.
    lists = [k for k, c in enumerate(counts) if type(c) is list]
    runs = [counts[k] for k in lists]
    lengths = np.fromiter(map(len, runs), np.int64, len(runs))
    owner = np.repeat(np.arange(len(runs)), lengths)
    flat = list(itertools.chain.from_iterable(runs))
    ok = set(map(type, flat)) <= {int}
    values = np.fromiter(flat, np.int64, len(flat)) if ok else np.zeros(0, np.int64)
    negative = np.bincount(owner, weights=values < 0, minlength=len(runs)) > 0 if ok else np.ones(len(runs), bool)
    sums = np.bincount(owner, weights=values, minlength=len(runs)) if ok else np.zeros(len(runs))
    bad = np.flatnonzero(negative | (sums != pixels[lists]))
    if len(bad):
        k = lists[bad[0]]
        valid = ok and not negative[bad[0]]
        problem = f"run lengths summing to {int(sums[bad[0]])}" if valid else _short(counts[k])
        raise names.fail(rows[k], f"has RLE 'counts' {problem}",
                         f"they must be non-negative integers summing to height*width = {pixels[k]}")
    for k in lists:
        h, w = int(heights[rows[k]]), int(widths[rows[k]])
        counts[k] = mask_util.frPyObjects({"size": [h, w], "counts": counts[k]}, h, w)["counts"]
    return counts


def compressed_rle_totals(strings):
    """Sum of the run lengths of each of pycocotools' compressed RLE strings; -1 where one does not decode.

    pycocotools' decoder reads any bytes, so a corrupt string would only fail (or
    give a wrong mask) when a worker decodes it hours later. The format
    (maskApi.c, rleToString): each count is little-endian 5-bit groups in chars
    48 + value, 0x20 meaning "more groups follow", 0x10 of the last group the
    sign; from the fourth count on, each is stored as a difference to the count
    two before it. Vectorised over all strings at once.
    """
    n = len(strings)
    totals = np.full(n, -1, np.int64)
    lengths = np.fromiter(map(len, strings), np.int64, n)
    if not lengths.sum():
        totals[lengths == 0] = 0
        return totals
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(n), lengths)
    bad = _any_per(owner, (c < 0) | (c > 63), n)
    c = c.clip(0, 63)
    last = (c & 0x20) == 0  # a count's last group
    # A string whose final group says "more follows" is truncated; ending its last
    # count there keeps the damage from spilling into the next string.
    string_end = (np.cumsum(lengths) - 1)[lengths > 0]
    bad[lengths > 0] |= ~last[string_end]
    last[string_end] = True
    ends = np.flatnonzero(last)
    count_of = np.concatenate([[0], np.cumsum(last)[:-1]])  # which count each group belongs to
    group = np.arange(len(c)) - np.concatenate([[0], ends + 1])[count_of]  # position within its count
    bad |= _any_per(owner, group > 12, n)  # over 64 bits: no real count is that long
    shifted = (c & 0x1F) << (5 * group.clip(max=12))
    x = np.add.reduceat(shifted, np.concatenate([[0], ends[:-1] + 1]))
    negative = (c[ends] & 0x10) != 0
    x = x - (negative.astype(np.int64) << (5 * (group[ends].clip(max=12) + 1)))
    count_owner = owner[ends]
    first = np.searchsorted(count_owner, np.arange(n))
    index = np.arange(len(x)) - first[count_owner]
    # counts[i] = x[i] + counts[i - 2] for i > 2: a running sum over each (string, parity) chain.
    chain = count_owner * 3 + np.where(index == 0, 2, index % 2)
    order = np.lexsort((index, chain))
    sums = np.cumsum(x[order])
    starts = np.flatnonzero(np.concatenate([[True], chain[order][1:] != chain[order][:-1]]))
    base = np.repeat(sums[starts] - x[order][starts], np.diff(np.append(starts, len(order))))
    counts = np.empty_like(x)
    counts[order] = sums - base
    bad |= _any_per(count_owner, counts < 0, n)
    totals = np.bincount(count_owner, weights=counts.clip(min=0), minlength=n).astype(np.int64)
    totals[bad] = -1
    return totals


def _any_per(owner, flags, n):
    return np.bincount(owner, weights=flags, minlength=n) > 0


def _pack_keypoints(kps, names):
    """Per annotation (json order) [begin, end) into one flat array of all keypoint values."""
    n = len(kps)
    present = np.flatnonzero([k is not None for k in kps]) if kps.count(None) < n else np.zeros(0, np.int64)
    lists = [kps[i] for i in present]
    if not set(map(type, lists)) <= {list}:
        k = _first_bad(lists, lambda v: type(v) is list)
        raise names.fail(present[k], f"has 'keypoints' {_short(lists[k])}", "keypoints are a list x1, y1, v1, ...")
    values, lengths = _numbers(lists, present, names, "keypoints", "keypoints are numbers x1, y1, v1, x2, ...")
    begin, end = np.zeros(n, np.int64), np.zeros(n, np.int64)
    end[present] = np.cumsum(lengths)
    begin[present] = end[present] - lengths
    return begin, end, values
