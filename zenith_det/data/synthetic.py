"""Small, seeded COCO-format datasets for smoke tests and CPU training runs.

Two kinds:
  * "shapes": filled ellipses, triangles, rectangles and stars on a textured
    background, with polygon masks and deliberately non-contiguous category ids;
  * "keypoints": stick figures ("person") with COCO's 17 keypoints and skeleton.

Segmentations are written as COCO's own json writes them, so every reader of COCO
(pycocotools, torchvision's references) reads them: objects (iscrowd=0) as
polygons, crowd regions (iscrowd=1) as uncompressed RLE ({"size": [h, w],
"counts": [run lengths, column-major, zeros first]}). A shape partly hidden by a
later one gets its visible pixels' outer boundaries, traced along pixel edges,
as one or more polygons. bbox and area are computed from the segmentation as
written (rasterized by pycocotools), and the pixels are painted from those same
masks, so every annotation matches its image exactly. Each split also holds a
few images without annotations and crowd regions, so the code paths real COCO
needs are exercised. Same arguments => byte-identical json.
"""
import json
import os
import shutil
import tempfile
import zlib

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from ..errors import UserError

__all__ = [
    "generate_synthetic_coco",
    "ensure_synthetic_dataset",
    "SYNTHETIC_DATASETS",
    "COCO_KEYPOINT_NAMES",
    "COCO_SKELETON",
]

# Non-contiguous on purpose: code that assumes category id == label breaks here.
SHAPE_CATEGORIES = [(2, "ellipse"), (5, "triangle"), (9, "rectangle"), (13, "star")]
SHAPE_COLORS = {2: (205, 55, 50), 5: (55, 170, 65), 9: (50, 95, 215), 13: (230, 195, 45)}

COCO_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
# 1-based, exactly as in person_keypoints_*2017.json.
COCO_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
    [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]

# name -> (kind, split, num_images); what the catalog generates on first use.
SYNTHETIC_DATASETS = {
    "synthetic_shapes_train": ("shapes", "train", 256),
    "synthetic_shapes_val": ("shapes", "val", 64),
    "synthetic_keypoints_train": ("keypoints", "train", 256),
    "synthetic_keypoints_val": ("keypoints", "val", 64),
}
DEFAULT_IMAGE_SIZE = (144, 144)
DEFAULT_SEED = 0


def generate_synthetic_coco(out_dir, kind, split, num_images, image_size=DEFAULT_IMAGE_SIZE, seed=DEFAULT_SEED):
    """Write `num_images` images and their COCO json under `out_dir`.

    Layout: <out_dir>/annotations/{instances|person_keypoints}_<split>.json and
    <out_dir>/<split>/*.jpg. Returns (json_path, image_root).
    """
    if kind not in ("shapes", "keypoints"):
        raise ValueError(f"kind must be 'shapes' or 'keypoints', got {kind!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    # train and val of the same seed must not be the same images.
    rng = np.random.default_rng([int(seed), zlib.crc32(kind.encode()), zlib.crc32(split.encode())])
    image_root = os.path.join(out_dir, split)
    os.makedirs(image_root, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)

    special = rng.permutation(num_images) if num_images >= 2 else np.array([], dtype=int)
    n_empty = max(1, num_images // 25) if num_images >= 2 else 0
    n_crowd = max(1, num_images // 16) if num_images >= 2 else 0
    empty_ids, crowd_ids = set(special[:n_empty].tolist()), set(special[n_empty:n_empty + n_crowd].tolist())

    draw_image = _draw_shapes_image if kind == "shapes" else _draw_keypoints_image
    images, annotations = [], []
    for i in range(num_images):
        h, w = _image_shape(rng, image_size)
        image_id = 1000 + 3 * i  # sparse, so an index is never mistaken for an id
        file_name = f"{image_id:012d}.jpg"
        pixels, instances = draw_image(rng, h, w, empty=i in empty_ids, crowd=i in crowd_ids)
        Image.fromarray(pixels).save(os.path.join(image_root, file_name), quality=92)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for inst in instances:
            inst.update(id=len(annotations) + 1, image_id=image_id)
            annotations.append(inst)

    if kind == "shapes":
        categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in SHAPE_CATEGORIES]
        json_name = f"instances_{split}.json"
    else:
        categories = [{
            "id": 1, "name": "person", "supercategory": "person",
            "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(p) for p in COCO_SKELETON],
        }]
        json_name = f"person_keypoints_{split}.json"
    dataset = {
        "info": {"description": f"zenith_det synthetic {kind} ({split})", "version": "1", "seed": int(seed)},
        "licenses": [],
        "images": images,
        "annotations": [_ordered_annotation(a) for a in annotations],
        "categories": categories,
    }
    json_path = os.path.join(out_dir, "annotations", json_name)
    with open(json_path, "w") as f:
        json.dump(dataset, f, separators=(",", ":"))
    return json_path, image_root


def ensure_synthetic_dataset(name, root):
    """Paths of the synthetic dataset `name` under <root>/<name>/, generating it once.

    Safe when several processes (DDP ranks) call it at once: each generates into
    its own temporary folder next to the target and renames it into place; the
    rename is atomic, so a reader sees a complete dataset or none, and a loser of
    the race discards its copy and uses the winner's.
    """
    if name not in SYNTHETIC_DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; known: {', '.join(SYNTHETIC_DATASETS)}")
    kind, split, num_images = SYNTHETIC_DATASETS[name]
    final_dir = os.path.join(root, name)
    paths = _layout(final_dir, kind, split)
    if os.path.isfile(paths[0]):
        return paths
    tmp_dir = None
    try:
        os.makedirs(root, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
        generate_synthetic_coco(tmp_dir, kind, split, num_images)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not os.path.isfile(paths[0]):  # not a lost race: something else is in the way
                raise UserError(f"{final_dir} exists but holds no {os.path.relpath(paths[0], final_dir)}; "
                                "delete that folder so the synthetic dataset is generated again") from None
    except OSError as e:
        raise UserError(f"cannot write the synthetic dataset {name} under {root} ({e.strerror or e}); "
                        "set ZENITH_DATASETS to a writable folder with a few MB free") from None
    finally:
        if tmp_dir and os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return paths


def _layout(out_dir, kind, split):
    json_name = f"instances_{split}.json" if kind == "shapes" else f"person_keypoints_{split}.json"
    return os.path.join(out_dir, "annotations", json_name), os.path.join(out_dir, split)


def _ordered_annotation(ann):
    # A fixed key order keeps the json stable and easy to read.
    keys = ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation", "num_keypoints", "keypoints"]
    return {k: ann[k] for k in keys if k in ann}


def _image_shape(rng, image_size):
    # Mostly non-square, both orientations, so aspect-ratio grouping has two groups.
    base_h, base_w = image_size
    long_side = int(round(max(base_h, base_w) * rng.uniform(1.0, 1.11)))
    short_side = int(round(min(base_h, base_w) * rng.uniform(0.89, 1.0)))
    return (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)


def _background(rng, h, w):
    """Grey-ish gradient with blotches and noise: texture, but no object colours."""
    grey = rng.uniform(70, 185)
    c0 = grey + rng.uniform(-20, 20, size=3)
    c1 = grey + rng.uniform(-45, 45, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    coarse = rng.normal(0, 14, size=(h // 12 + 2, w // 12 + 2)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR))
    img += blotches[..., None]
    img += rng.normal(0, 7, size=(h, w, 3))
    return img


def _paint(img, mask, color, rng, noise=10.0):
    m = mask.astype(bool)
    img[m] = np.asarray(color, dtype=np.float64) + rng.normal(0, noise, size=(int(m.sum()), 3))


def _finish(img):
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _poly_rle(polygons, h, w):
    return mask_util.merge(mask_util.frPyObjects(polygons, h, w))


def _uncompressed_rle(mask):
    """COCO's crowd format: run lengths over the column-major pixels, starting with zeros."""
    flat = np.asarray(mask, bool).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = ([0] if flat[0] else []) + [int(n) for n in np.diff(bounds)]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _crowd_annotation(mask, h, w):
    """segmentation, bbox and area of a crowd region; the last two from the RLE as written."""
    segmentation = _uncompressed_rle(mask)
    bbox, area = _box_area(mask_util.frPyObjects(segmentation, h, w))
    return {"bbox": bbox, "area": area, "iscrowd": 1, "segmentation": segmentation}


# Edge directions on the image (x right, y down) in clockwise order: east, south, west, north.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _mask_polygons(mask):
    """The outer boundaries of `mask` as flat polygons along pixel edges; None if it has a hole.

    Pixel (r, c) is the square [c, c+1] x [r, r+1]. Each edge between the mask and
    the outside is walked clockwise around its pixel, so the mask is on the right;
    chaining the edges end to start gives closed loops: clockwise around each
    4-connected part of the mask, counter-clockwise around each hole. pycocotools
    rasterizes these polygons to exactly the mask (when it has no hole). Straight runs are
    merged, so a polygon lists only its corners (always >= 4 points).
    """
    m = np.pad(np.asarray(mask, bool), 1)
    inner = m[1:-1, 1:-1]
    ways_on = {}  # corner (x, y) -> directions of the edges that start there
    for d, (outside, dx, dy) in enumerate((
            (~m[:-2, 1:-1], 0, 0),    # top edge: east from the top-left corner
            (~m[1:-1, 2:], 1, 0),     # right edge: south from the top-right corner
            (~m[2:, 1:-1], 1, 1),     # bottom edge: west from the bottom-right corner
            (~m[1:-1, :-2], 0, 1))):  # left edge: north from the bottom-left corner
        for r, c in zip(*np.nonzero(inner & outside)):
            ways_on.setdefault((int(c) + dx, int(r) + dy), []).append(d)
    polygons = []
    for start in sorted(ways_on):
        while ways_on[start]:
            loop, point, d = [], start, ways_on[start].pop(0)
            while True:
                loop.append((point, d))
                point = (point[0] + _STEPS[d][0], point[1] + _STEPS[d][1])
                out = ways_on[point]
                if not out:
                    break  # back at the start
                # Two ways on only at a corner shared by two diagonal pixels: turn right, around
                # the same pixel, so diagonal neighbours get separate polygons that never cross.
                d = next(turn for turn in ((d + 1) % 4, d, (d + 3) % 4) if turn in out)
                out.remove(d)
            corners = [p for k, (p, d) in enumerate(loop) if d != loop[k - 1][1]]
            xs, ys = np.array(corners, dtype=np.float64).T
            if np.dot(xs, np.roll(ys, -1)) < np.dot(ys, np.roll(xs, -1)):
                return None  # a counter-clockwise loop: a hole
            polygons.append([float(v) for p in corners for v in p])
    return polygons


def _box_area(rle):
    x, y, bw, bh = (float(v) for v in mask_util.toBbox(rle))
    return [x, y, bw, bh], int(mask_util.area(rle))


def _flat(points):
    return [round(float(v), 2) for v in np.asarray(points).reshape(-1)]


# ---------------------------------------------------------------- shapes


def _shape_polygon(rng, category_id, size):
    """Vertices around the origin, (N, 2)."""
    rot = rng.uniform(0, 2 * np.pi)
    if category_id == 2:  # ellipse
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        rx, ry = size / 2, size / 2 * rng.uniform(0.6, 1.0)
        pts = np.stack([rx * np.cos(a), ry * np.sin(a)], 1)
    elif category_id == 5:  # triangle
        a = np.deg2rad([90, 210, 330] + rng.uniform(-12, 12, size=3))
        pts = size / 2 * np.stack([np.cos(a), np.sin(a)], 1)
    elif category_id == 9:  # rectangle
        bw, bh = size * rng.uniform(0.65, 1.0), size * rng.uniform(0.5, 0.9)
        pts = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]) / 2
        rot = rng.uniform(-0.5, 0.5)
    else:  # five-pointed star
        a = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, size / 2, size / 2 * 0.45)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    c, s = np.cos(rot), np.sin(rot)
    return pts @ np.array([[c, s], [-s, c]])


def _place(rng, pts, h, w, margin=1.0):
    lo, hi = pts.min(0), pts.max(0)
    x_range = (margin - lo[0], w - margin - hi[0])
    y_range = (margin - lo[1], h - margin - hi[1])
    if x_range[0] >= x_range[1] or y_range[0] >= y_range[1]:
        return None
    return pts + [rng.uniform(*x_range), rng.uniform(*y_range)]


def _draw_shapes_image(rng, h, w, empty, crowd):
    img = _background(rng, h, w)
    instances = []
    blocked = np.zeros((h, w), bool)
    if crowd:
        crowd_mask = _crowd_of_shapes(rng, h, w, img)
        if crowd_mask is not None:
            instances.append({"category_id": 2, **_crowd_annotation(crowd_mask, h, w)})
            ys, xs = np.nonzero(crowd_mask)
            blocked[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True

    objects = []  # [category_id, full mask, visible mask, polygons of the visible mask]
    for _ in range(0 if empty else int(rng.integers(1, 5))):
        category_id = SHAPE_CATEGORIES[int(rng.integers(len(SHAPE_CATEGORIES)))][0]
        for _attempt in range(20):
            size = rng.uniform(20, min(60, 0.6 * min(h, w)))
            pts = _place(rng, _shape_polygon(rng, category_id, size), h, w)
            if pts is None:
                continue
            poly = _flat(pts)
            mask = mask_util.decode(_poly_rle([poly], h, w)).astype(bool)
            # Partial occlusion is fine; hiding most of an earlier shape is not.
            if (mask & blocked).any() or any((vis & ~mask).sum() < 0.7 * full.sum() for _, full, vis, _ in objects):
                continue
            # An occluded shape is annotated with the outer boundaries of its visible part.
            # COCO polygons cannot express a hole, and a polygon around one would claim the
            # occluder's pixels too (up to 30% of the shape), so a placement that would leave
            # a hole in an earlier shape (e.g. this one inside it) is retried like any other misfit.
            occluded = {k: _mask_polygons(obj[2] & ~mask) for k, obj in enumerate(objects) if (obj[2] & mask).any()}
            if any(polygons is None for polygons in occluded.values()):
                continue
            for k, polygons in occluded.items():
                objects[k][2:] = [objects[k][2] & ~mask, polygons]
            objects.append([category_id, mask, mask.copy(), [poly]])
            break

    for category_id, full, _, _ in objects:
        color = np.asarray(SHAPE_COLORS[category_id]) + rng.integers(-25, 26, size=3)
        _paint(img, full, color, rng)  # later shapes overwrite earlier ones: occlusion
    for category_id, _, _, polygons in objects:
        bbox, area = _box_area(_poly_rle(polygons, h, w))
        instances.append({"category_id": category_id, "bbox": bbox, "area": area, "iscrowd": 0,
                          "segmentation": polygons})
    return _finish(img), instances


def _crowd_of_shapes(rng, h, w, img):
    """A tight cluster of small ellipses, annotated as one crowd region."""
    cx, cy = rng.uniform(25, w - 25), rng.uniform(25, h - 25)
    union = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(5, 9))):
        pts = _shape_polygon(rng, 2, rng.uniform(6, 11)) + [cx + rng.uniform(-16, 16), cy + rng.uniform(-16, 16)]
        pts = np.clip(pts, 1, [w - 1, h - 1])
        m = mask_util.decode(_poly_rle([_flat(pts)], h, w))
        _paint(img, m, np.asarray(SHAPE_COLORS[2]) + rng.integers(-25, 26, size=3), rng)
        union |= m
    return union if union.any() else None


# ---------------------------------------------------------------- keypoints


def _stick_figure(rng, scale):
    """17 COCO keypoints (17, 2) and body-part polygons of a figure facing the camera.

    The person's left is the image's right, as in COCO.
    """
    s = scale
    head_c = np.array([0.0, 0.09 * s])
    kp = np.zeros((17, 2))
    kp[0] = head_c + [0, 0.02 * s]                                   # nose
    kp[1], kp[2] = head_c + [0.035 * s, -0.01 * s], head_c + [-0.035 * s, -0.01 * s]  # eyes
    kp[3], kp[4] = head_c + [0.075 * s, 0.0], head_c + [-0.075 * s, 0.0]               # ears
    kp[5], kp[6] = [0.13 * s, 0.22 * s], [-0.13 * s, 0.22 * s]       # shoulders
    kp[11], kp[12] = [0.085 * s, 0.53 * s], [-0.085 * s, 0.53 * s]   # hips

    def limb(start, angle, length):
        return start + length * np.array([np.sin(angle), np.cos(angle)])

    for side, sign in ((0, 1.0), (1, -1.0)):  # 0: left (image right), 1: right
        upper = np.deg2rad(rng.uniform(10, 150))
        lower = upper + np.deg2rad(rng.uniform(-60, 80))
        elbow = limb(kp[5 + side], sign * upper, 0.17 * s)
        kp[7 + side] = elbow
        kp[9 + side] = limb(elbow, sign * lower, 0.16 * s)
        thigh = np.deg2rad(rng.uniform(0, 28))
        shin = thigh + np.deg2rad(rng.uniform(-18, 18))
        knee = limb(kp[11 + side], sign * thigh, 0.23 * s)
        kp[13 + side] = knee
        kp[15 + side] = limb(knee, sign * shin, 0.23 * s)

    lean = np.deg2rad(rng.uniform(-10, 10))
    c, sn = np.cos(lean), np.sin(lean)
    pivot = (kp[11] + kp[12]) / 2
    rot = np.array([[c, sn], [-sn, c]])
    kp = (kp - pivot) @ rot + pivot
    head_c = (head_c - pivot) @ rot + pivot

    thick = max(0.035 * s, 1.5)
    a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    head = head_c + 0.085 * s * np.stack([np.cos(a), np.sin(a)], 1)
    torso = np.stack([kp[5], kp[6], kp[12], kp[11]])
    bones = [(5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)]
    limbs = [_thick_segment(kp[i], kp[j], thick) for i, j in bones]
    return kp, head, [torso] + limbs


def _thick_segment(p, q, half):
    d = q - p
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6) * half
    along = d / max(float(np.hypot(*d)), 1e-6) * half * 0.5  # overlap the joints a little
    return np.stack([p - along + n, q + along + n, q + along - n, p - along - n])


def _place_figure(rng, h, w, scale):
    kp, head, body = _stick_figure(rng, scale)
    parts = [head] + body
    allpts = np.concatenate(parts + [kp])
    placed = _place(rng, allpts, h, w, margin=2.0)
    if placed is None:
        return None
    shift = placed[0] - allpts[0]
    return kp + shift, head + shift, [b + shift for b in body]


def _draw_figure(img, rng, h, w, head, body):
    skin = np.array([225, 180, 140]) + rng.integers(-30, 20, size=3)
    cloth = np.array([[40, 60, 160], [160, 40, 50], [40, 130, 60], [60, 60, 60]])[int(rng.integers(4))]
    body_polys = [_flat(b) for b in body]
    head_poly = _flat(head)
    _paint(img, mask_util.decode(_poly_rle(body_polys, h, w)), cloth + rng.integers(-20, 21, size=3), rng)
    _paint(img, mask_util.decode(_poly_rle([head_poly], h, w)), skin, rng)
    return [head_poly] + body_polys


def _draw_keypoints_image(rng, h, w, empty, crowd):
    img = _background(rng, h, w)
    instances = []
    occupied = np.zeros((h, w), bool)
    if crowd:
        # A few small figures huddled together: one crowd region, no keypoints.
        union = np.zeros((h, w), np.uint8)
        x0, y0 = rng.uniform(0, max(w - 60, 1)), rng.uniform(0, max(h - 50, 1))
        for k in range(int(rng.integers(3, 5))):
            _, head, body = _stick_figure(rng, rng.uniform(26, 34))
            shift = np.array([x0 + 12 * k + 8, y0 + rng.uniform(0, 8)])
            head, body = np.clip(head + shift, 1, [w - 1, h - 1]), [np.clip(b + shift, 1, [w - 1, h - 1]) for b in body]
            polys = _draw_figure(img, rng, h, w, head, body)
            union |= mask_util.decode(_poly_rle(polys, h, w))
        instances.append({"category_id": 1, **_crowd_annotation(union, h, w), "num_keypoints": 0, "keypoints": [0] * 51})
        ys, xs = np.nonzero(union)
        occupied[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True

    for _ in range(0 if empty else int(rng.integers(1, 4))):
        far_away = rng.random() < 0.04  # a small, unlabelled person, as COCO has
        for _attempt in range(25):
            scale = rng.uniform(22, 30) if far_away else rng.uniform(60, min(105, 0.8 * h))
            fig = _place_figure(rng, h, w, scale)
            if fig is None:
                continue
            kp, head, body = fig
            mask = mask_util.decode(_poly_rle([_flat(head)] + [_flat(b) for b in body], h, w)).astype(bool)
            if (mask & occupied).any():
                continue
            occupied |= mask
            polys = _draw_figure(img, rng, h, w, head, body)
            # v=2 visible, v=1 labelled but hidden, v=0 not labelled (x=y=0).
            v = np.where(rng.random(17) < 0.08, 1, 2)
            v[rng.random(17) < 0.05] = 0
            if far_away:
                v[:] = 0
            keypoints = []
            for (x, y), vis in zip(kp, v):
                keypoints += [round(float(x), 2), round(float(y), 2), int(vis)] if vis else [0, 0, 0]
            bbox, area = _box_area(_poly_rle(polys, h, w))
            instances.append({"category_id": 1, "bbox": bbox, "area": area, "iscrowd": 0, "segmentation": polys,
                              "num_keypoints": int((v > 0).sum()), "keypoints": keypoints})
            break
    return _finish(img), instances
