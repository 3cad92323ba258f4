"""COCO-format json + image folder -> (image, target) pairs for torchvision detection models.

Follows torchvision's references/detection/coco_utils.py: crowd annotations and
boxes that vanish after clipping are never training targets, masks come from
polygons or RLE. Every mistake in the data is reported as one line that names the
json (and annotation) or the image file, so it can be fixed without a debugger.
"""
import contextlib
import io
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ..errors import UserError

__all__ = ["CocoDetection", "DatasetMetadata", "DatasetError", "load_coco_json", "read_image"]

logger = logging.getLogger(__name__)

# Boxes no wider or taller than this after clipping are dropped (torchvision's
# references treat them the same way when filtering images).
MIN_BOX_SIDE = 1.0


class DatasetError(UserError):
    """A UserError raised while reading a sample, possibly inside a DataLoader worker.

    A worker's exception is re-raised in the main process as
    type(exc)("Caught ... Original Traceback ...<last line>"); we keep only the
    original one-line message so the entry point can still print it as one line.
    """

    def __init__(self, message=""):
        if isinstance(message, str) and message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


@dataclass
class DatasetMetadata:
    """What the model, the flip and the evaluator need to know, all read from the json."""

    json_file: str
    image_root: str
    thing_classes: list  # names; thing_classes[i] is contiguous label i + 1
    contiguous_id_to_category_id: dict  # {1..K: json category id}; 0 is background
    category_id_to_contiguous_id: dict
    keypoint_names: list = field(default_factory=list)
    keypoint_flip_map: list = field(default_factory=list)  # [(left_x, right_x), ...]
    keypoint_flip_indices: list = field(default_factory=list)  # keypoints[:, flip_indices] mirrors a person
    keypoint_skeleton: list = field(default_factory=list)  # 1-based pairs, as in the json

    @property
    def num_classes(self) -> int:
        """K, without background (torchvision models want K + 1)."""
        return len(self.thing_classes)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def same_categories(self, other) -> bool:
        return (self.contiguous_id_to_category_id == other.contiguous_id_to_category_id
                and self.thing_classes == other.thing_classes
                and self.keypoint_names == other.keypoint_names)


# ---------------------------------------------------------------- json


_JSON_CACHE = {}  # (path, mtime_ns, size) -> COCO; a COCO train json takes seconds to parse


def load_coco_json(json_file) -> COCO:
    """Parsed and checked pycocotools COCO for `json_file`, cached per process.

    Raises UserError for a missing file, a file that is not COCO json, or an
    annotation pointing to an unknown image or category.
    """
    if not os.path.isfile(json_file):
        raise UserError(f"annotation file not found: {json_file} (fix the path in DATASETS.REGISTER, "
                        "or point ZENITH_DATASETS at the folder holding the dataset)")
    st = os.stat(json_file)
    key = (os.path.abspath(json_file), st.st_mtime_ns, st.st_size)
    if key not in _JSON_CACHE:
        _JSON_CACHE[key] = _parse_coco_json(json_file)
    return _JSON_CACHE[key]


def _parse_coco_json(json_file) -> COCO:
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{json_file} is not valid JSON ({e}); regenerate or fix the annotation file") from e
    if not isinstance(data, dict):
        raise UserError(f"{json_file} is not a COCO annotation file: its top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{json_file} is not a COCO annotation file: it has no '{key}' list "
                            "(COCO json needs 'images', 'annotations' and 'categories')")
    _check_entries(json_file, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    logger.info("Loaded %s: %d images, %d annotations, %d categories", json_file,
                len(data["images"]), len(data["annotations"]), len(data["categories"]))
    return coco


def _check_entries(json_file, data):
    def need(entry, keys, what):
        missing = [k for k in keys if k not in entry] if isinstance(entry, dict) else list(keys)
        if missing:
            ident = entry.get("id", "?") if isinstance(entry, dict) else "?"
            raise UserError(f"{json_file}: {what} id {ident} lacks {', '.join(missing)} "
                            "(every COCO entry needs these fields)")

    image_ids, category_ids = set(), set()
    for img in data["images"]:
        need(img, ("id", "file_name", "width", "height"), "image")
        if img["id"] in image_ids:
            raise UserError(f"{json_file}: image id {img['id']} appears twice in 'images'; ids must be unique")
        image_ids.add(img["id"])
    for cat in data["categories"]:
        need(cat, ("id", "name"), "category")
        if cat["id"] in category_ids:
            raise UserError(f"{json_file}: category id {cat['id']} appears twice in 'categories'; ids must be unique")
        category_ids.add(cat["id"])
    if not category_ids:
        raise UserError(f"{json_file}: 'categories' is empty; a detection dataset needs at least one category")
    for ann in data["annotations"]:
        need(ann, ("id", "image_id", "category_id", "bbox"), "annotation")
        if ann["image_id"] not in image_ids:
            raise UserError(f"{json_file}: annotation id {ann['id']} refers to image_id {ann['image_id']}, "
                            "which is not in 'images'; fix or remove that annotation")
        if ann["category_id"] not in category_ids:
            raise UserError(f"{json_file}: annotation id {ann['id']} refers to category_id {ann['category_id']}, "
                            "which is not in 'categories'; fix or remove that annotation")
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
            raise UserError(f"{json_file}: annotation id {ann['id']} has bbox {ann['bbox']!r}; "
                            "COCO boxes are [x, y, width, height]")


def _metadata(coco, json_file, image_root) -> DatasetMetadata:
    # Sorted by id, as detectron2 does, so the label order never depends on json order.
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    contiguous_to_id = {i + 1: c["id"] for i, c in enumerate(cats)}
    with_kps = [c for c in cats if c.get("keypoints")]
    names = list(with_kps[0]["keypoints"]) if with_kps else []
    for c in with_kps[1:]:
        if list(c["keypoints"]) != names:
            raise UserError(f"{json_file}: categories {with_kps[0]['name']!r} and {c['name']!r} list different "
                            "keypoints; torchvision's keypoint head predicts one set for all classes")
    flip_map, flip_indices = _keypoint_flip(names)
    return DatasetMetadata(
        json_file=json_file,
        image_root=image_root,
        thing_classes=[c["name"] for c in cats],
        contiguous_id_to_category_id=contiguous_to_id,
        category_id_to_contiguous_id={v: k for k, v in contiguous_to_id.items()},
        keypoint_names=names,
        keypoint_flip_map=flip_map,
        keypoint_flip_indices=flip_indices,
        keypoint_skeleton=[list(p) for p in with_kps[0].get("skeleton", [])] if with_kps else [],
    )


def _keypoint_flip(names):
    """Pairs whose names differ only by left/right, and the permutation that swaps them."""
    def partner(name):
        for a, b in (("left", "right"), ("right", "left")):
            for x, y in ((a, b), (a.capitalize(), b.capitalize()), (a.upper(), b.upper())):
                if x in name:
                    return name.replace(x, y, 1)
        return None

    index = {n: i for i, n in enumerate(names)}
    flip_indices, flip_map = list(range(len(names))), []
    for i, name in enumerate(names):
        other = partner(name)
        if other in index:
            flip_indices[i] = index[other]
            if i < index[other]:
                flip_map.append((name, other))
    return flip_map, flip_indices


# ---------------------------------------------------------------- images


def read_image(path, expected_size=None, image_root=""):
    """float32 RGB tensor (3, H, W) in [0, 1]; `expected_size` is the json's (width, height)."""
    try:
        with Image.open(path) as raw:
            raw.load()
            img = raw
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path} (under image_root {image_root}); "
                           "fix image_root in DATASETS.REGISTER or restore the file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = " ".join(str(e).split())
        raise DatasetError(f"cannot read image {path} (under image_root {image_root}): {reason}; "
                           "replace the file or drop it from the json") from None
    # Honour EXIF rotation as detectron2 does, unless the json describes the raw pixels.
    upright = ImageOps.exif_transpose(img)
    if expected_size is None or upright.size == tuple(expected_size):
        img = upright
    if expected_size is not None and img.size != tuple(expected_size):
        raise DatasetError(f"image {path} is {img.size[0]}x{img.size[1]} but its json entry says "
                           f"{expected_size[0]}x{expected_size[1]} (width x height); fix the json or the file")
    return _to_tensor(img)


def _to_tensor(img):
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit greyscale (PNG/TIFF): Pillow's convert("RGB") would clip at 255.
        grey = torch.from_numpy(np.array(img, dtype=np.float32) / 65535.0).clamp_(0, 1)
        return grey.unsqueeze(0).expand(3, -1, -1).contiguous()
    if img.mode == "P":
        img = img.convert("RGBA")  # palettes with transparency warn when converted to RGB directly
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, RGBA (alpha dropped), CMYK, YCbCr, ...
    array = torch.from_numpy(np.array(img, dtype=np.uint8))
    return array.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


# ---------------------------------------------------------------- dataset


_WARNED = set()


class CocoDetection(torch.utils.data.Dataset):
    """A COCO json and its image folder as a map-style dataset.

    dataset[i] -> (image, target): image float32 (3, H, W) in [0, 1]; target has
    boxes (N, 4) xyxy float32, labels int64 in 1..K, area, iscrowd, image_id, and
    masks uint8 (N, H, W) if `with_masks`, keypoints float32 (N, K, 3) if
    `with_keypoints`. Crowd regions and degenerate boxes are never targets; with
    `with_keypoints`, neither are people without a labelled keypoint.
    `filter_empty` drops images left with no target.
    """

    def __init__(self, json_file, image_root, *, with_masks=False, with_keypoints=False,
                 filter_empty=False, name=None):
        self.json_file = json_file
        self.image_root = image_root
        self.name = name or json_file
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.coco = load_coco_json(json_file)
        self.metadata = _metadata(self.coco, json_file, image_root)
        if with_keypoints and not self.metadata.keypoint_names:
            raise UserError(f"{json_file} has no category with 'keypoints', so a keypoint model cannot train on it; "
                            "use a person_keypoints json or a MODEL.META_ARCHITECTURE without keypoints")

        self._targets = self._select_annotations()
        self.ids = sorted(self.coco.imgs)
        if filter_empty:
            self.ids = [i for i in self.ids if self._targets[i]]
            if not self.ids:
                raise UserError(f"{json_file}: no image has a usable annotation (non-crowd, box over "
                                f"{MIN_BOX_SIDE:g} px{', a labelled keypoint' if with_keypoints else ''}); "
                                "fix the annotations or set DATALOADER.FILTER_EMPTY_ANNOTATIONS False")
        self._check_image_files()

    # Metadata, flattened for convenience.
    thing_classes = property(lambda self: self.metadata.thing_classes)
    contiguous_id_to_category_id = property(lambda self: self.metadata.contiguous_id_to_category_id)
    category_id_to_contiguous_id = property(lambda self: self.metadata.category_id_to_contiguous_id)
    keypoint_names = property(lambda self: self.metadata.keypoint_names)
    keypoint_flip_map = property(lambda self: self.metadata.keypoint_flip_map)
    keypoint_flip_indices = property(lambda self: self.metadata.keypoint_flip_indices)
    num_classes = property(lambda self: self.metadata.num_classes)
    num_keypoints = property(lambda self: self.metadata.num_keypoints)

    def __len__(self):
        return len(self.ids)

    def aspect_ratios(self):
        """width / height of every image, in dataset order, from the json alone."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def _select_annotations(self):
        """{image_id: [(annotation, clipped xyxy box)]} of the annotations that become targets."""
        num_keypoints = self.metadata.num_keypoints
        selected, degenerate = {}, []
        for image_id, img in self.coco.imgs.items():
            keep = []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0):
                    continue
                x, y, w, h = ann["bbox"]
                box = [min(max(x, 0), img["width"]), min(max(y, 0), img["height"]),
                       min(max(x + w, 0), img["width"]), min(max(y + h, 0), img["height"])]
                if box[2] - box[0] <= MIN_BOX_SIDE or box[3] - box[1] <= MIN_BOX_SIDE:
                    degenerate.append(ann["id"])
                    continue
                if self.with_keypoints:
                    kps = ann.get("keypoints") or []
                    if len(kps) != 3 * num_keypoints:
                        raise UserError(f"{self.json_file}: annotation id {ann['id']} has {len(kps)} keypoint values, "
                                        f"expected {3 * num_keypoints} (x, y, v for each of {num_keypoints})")
                    if not any(v > 0 for v in kps[2::3]):
                        continue
                if self.with_masks and "segmentation" not in ann:
                    raise UserError(f"{self.json_file}: annotation id {ann['id']} has no 'segmentation' but the "
                                    "model needs masks; add masks or use MODEL.META_ARCHITECTURE FasterRCNN")
                keep.append((ann, box))
            selected[image_id] = keep
        key = (os.path.abspath(self.json_file), os.stat(self.json_file).st_mtime_ns)
        if degenerate and key not in _WARNED:
            _WARNED.add(key)
            total = sum(1 for a in self.coco.dataset["annotations"] if not a.get("iscrowd", 0))
            logger.warning("%s: ignoring %d of %d non-crowd annotations whose box is at most %g px wide or tall "
                           "after clipping to the image (annotation ids %s%s)", self.json_file, len(degenerate),
                           total, MIN_BOX_SIDE, ", ".join(map(str, degenerate[:5])),
                           ", ..." if len(degenerate) > 5 else "")
        return selected

    def _check_image_files(self):
        # One listdir per folder instead of a stat per image: cheap even for COCO
        # train, and a missing file fails now rather than hours into training.
        if not os.path.isdir(self.image_root):
            raise UserError(f"image_root {self.image_root} (for {self.json_file}) is not a folder; "
                            "fix the image root in DATASETS.REGISTER or ZENITH_DATASETS")
        wanted = defaultdict(list)
        for image_id in self.ids:
            path = os.path.join(self.image_root, self.coco.imgs[image_id]["file_name"])
            wanted[os.path.dirname(path)].append(os.path.basename(path))
        missing = []
        for folder, names in wanted.items():
            present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            missing += [os.path.join(folder, n) for n in names if n not in present]
        if missing:
            raise UserError(f"{len(missing)} of {len(self.ids)} images listed in {self.json_file} are missing "
                            f"under image_root {self.image_root} (e.g. {missing[0]}); "
                            "fix the image root or restore them")

    def __getitem__(self, index):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        width, height = info["width"], info["height"]
        path = os.path.join(self.image_root, info["file_name"])
        image = read_image(path, expected_size=(width, height), image_root=self.image_root)

        anns = self._targets[image_id]
        to_label = self.metadata.category_id_to_contiguous_id
        target = {
            "boxes": torch.tensor([box for _, box in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([to_label[a["category_id"]] for a, _ in anns], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a, _ in anns],
                                 dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
        }
        if self.with_masks:
            masks = [self._mask(a, height, width) for a, _ in anns]
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, height, width), dtype=torch.uint8))
        if self.with_keypoints:
            k = self.metadata.num_keypoints
            keypoints = [a["keypoints"] for a, _ in anns]
            target["keypoints"] = torch.tensor(keypoints, dtype=torch.float32).reshape(-1, k, 3)
        return image, target

    def _mask(self, ann, height, width):
        segm = ann["segmentation"]
        if isinstance(segm, list):
            # pycocotools rejects polygons of fewer than 3 points; COCO has a few.
            polygons = [p for p in segm if len(p) >= 6]
            if not polygons:
                return np.zeros((height, width), dtype=np.uint8)
            rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if list(segm["size"]) != [height, width]:
                raise DatasetError(f"{self.json_file}: annotation id {ann['id']} has an RLE of size {segm['size']} "
                                   f"on a {height}x{width} image; the RLE size must be [height, width]")
            # Uncompressed RLE (counts as a list, COCO's crowd format) needs converting first.
            rle = mask_util.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
        else:
            raise DatasetError(f"{self.json_file}: annotation id {ann['id']} has a segmentation that is neither "
                               "a list of polygons nor an RLE dict with 'counts' and 'size'")
        return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)
