"""COCO-format json + image folder -> (image, target) pairs for torchvision detection models.

Follows torchvision's references/detection/coco_utils.py: crowd annotations and
boxes that vanish after clipping are never training targets, masks come from
polygons or RLE. Every mistake in the data is reported as one line that names the
json (and annotation) or the image file, so it can be fixed without a debugger.
"""
import contextlib
import hashlib
import io
import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ..errors import UserError
from .annotations import (SEGM_NONE, SEGM_POLYGONS, SEGM_SHORT, CocoTable, narrow, pack_coco, read_coco_json,
                          release_freed_memory)

try:  # deprecated in torchvision 0.29 for TorchCodec; without it PIL decodes everything
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover
    decode_jpeg = None

__all__ = ["CocoDetection", "DatasetMetadata", "DatasetError", "dataset_metadata", "load_coco_json", "load_coco_table",
           "metadata_from_categories", "pil_image_to_tensor", "read_image"]

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


_TABLE_CACHE = {}  # (path, mtime_ns, size) -> CocoTable; a COCO train json takes seconds to parse


def load_coco_table(json_file) -> CocoTable:
    """`json_file` read, checked and packed into arrays (annotations.py), cached per process.

    Raises UserError naming the file, the entry and the field for anything the
    data layer cannot use.
    """
    key = _cache_key(json_file)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = pack_coco(read_coco_json(json_file), json_file)
        release_freed_memory()  # the parsed json, now garbage
        logger.info("Loaded %s: %d images, %d annotations, %d categories", json_file,
                    _TABLE_CACHE[key].num_images, _TABLE_CACHE[key].num_annotations,
                    len(_TABLE_CACHE[key].categories))
    return _TABLE_CACHE[key]


def load_coco_json(json_file) -> COCO:
    """A checked pycocotools COCO for `json_file`, for code that wants pycocotools' index.

    Not cached and not used by the datasets: a COCO object is the per-annotation
    Python objects that DataLoader workers would copy (see annotations.py).
    """
    _cache_key(json_file)  # a missing file or a folder: one clear line
    data = read_coco_json(json_file)
    pack_coco(data, json_file)  # for its checks; the caller wants pycocotools' index, not the arrays
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


_IDENTITY_CACHE = {}  # (path, mtime_ns, size) -> identity


def json_identity(json_file) -> dict:
    """{"bytes": size, "sha256": hex digest} of an annotation file: what a checkpoint records of
    its training data, so a resume can tell the same file from one changed under the same name."""
    key = _cache_key(json_file)
    if key not in _IDENTITY_CACHE:
        digest = hashlib.sha256()
        with open(json_file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _IDENTITY_CACHE[key] = {"bytes": key[2], "sha256": digest.hexdigest()}
    return dict(_IDENTITY_CACHE[key])


def _cache_key(json_file):
    if not os.path.isfile(json_file):
        if os.path.isdir(json_file):
            raise UserError(f"{json_file} is a folder, not an annotation file; give the path of the .json in it")
        raise UserError(f"annotation file not found: {json_file} (fix the path in DATASETS.REGISTER, "
                        "or point ZENITH_DATASETS at the folder holding the dataset)")
    st = os.stat(json_file)
    return os.path.abspath(json_file), st.st_mtime_ns, st.st_size


def dataset_metadata(json_file, image_root) -> DatasetMetadata:
    """The metadata of a COCO json (classes, id maps, keypoints), from the cached table."""
    return _metadata(load_coco_table(json_file), json_file, image_root)


def _metadata(source, json_file, image_root) -> DatasetMetadata:
    """Metadata from a CocoTable or a pycocotools COCO."""
    categories = source.categories if isinstance(source, CocoTable) else source.dataset["categories"]
    return metadata_from_categories(categories, json_file, image_root)


def metadata_from_categories(categories, json_file, image_root="") -> DatasetMetadata:
    """Metadata from a COCO "categories" list (a json's, or the one a checkpoint carries)."""
    # Sorted by id, as detectron2 does, so the label order never depends on json order.
    cats = sorted(categories, key=lambda c: c["id"])
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


# An image that training shrinks more than SHRINK_HEADROOM-fold is shrunk while it is read, to
# SHRINK_HEADROOM times the largest size the model's own resize gives it: an 8000x8000 photo trained at
# 96 px was decoded at full size as float32 (768 MB), with a full-size mask per object, before that
# resize. The model's resize still decides the final size; images within the headroom (COCO's at
# its usual sizes) are read exactly as before.
SHRINK_HEADROOM = 2.0


def shrink_factor(width, height, largest_input):
    """The scale an image of `width` x `height` is read at: 1, or a scale below 1 where training's
    resize, at `largest_input` = (largest short side, largest long side), shrinks it more than
    SHRINK_HEADROOM-fold."""
    if largest_input is None:
        return 1.0
    short, long = largest_input
    final = min(short / min(width, height), long / max(width, height))
    return 1.0 if final * SHRINK_HEADROOM >= 1.0 else final * SHRINK_HEADROOM


def read_image(path, expected_size=None, image_root="", shrink_to=None):
    """float32 RGB tensor (3, H, W) in [0, 1]; `expected_size` is the json's (width, height).
    `shrink_to` (width, height): read smaller (a JPEG decoded at a reduced DCT scale, then resized
    with Pillow's antialiasing), so the full-size pixels never exist as floats.

    JPEGs of 1 or 3 components (COCO's) are decoded by torchvision.io.decode_jpeg
    (libjpeg-turbo, straight to (C, H, W)): 1.25x PIL's path to this float32 tensor at
    640x480 (1.45x for the decode alone; benchmarks/benchmark_loader.py), same pixels here.
    Anything else, and any JPEG decode_jpeg refuses or whose upright size is not the
    json's, goes through PIL as before.
    """
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        if not image_root:
            raise DatasetError(f"image not found: {path}") from None
        raise DatasetError(f"image not found: {path} (under image_root {image_root}); "
                           "fix image_root in DATASETS.REGISTER or restore the file") from None
    except OSError as e:
        raise _unreadable(path, image_root, e) from None
    if shrink_to is not None and expected_size is not None and tuple(shrink_to) != tuple(expected_size):
        return _read_with_pil(io.BytesIO(data), path, expected_size, image_root, shrink_to)
    if data[:3] == _JPEG_MAGIC:
        image = _decode_jpeg(data, expected_size)
        if image is not None:
            return image
    return _read_with_pil(io.BytesIO(data), path, expected_size, image_root)


_JPEG_MAGIC = b"\xff\xd8\xff"


def _read_bytes(path):
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)  # writable, so torch.frombuffer shares it
        n = f.readinto(data)
    return data[:n] if n != len(data) else data


def _decode_jpeg(data, expected_size):
    """float32 (3, H, W) from decode_jpeg, or None where PIL should decide (CMYK, errors, size)."""
    if decode_jpeg is None:
        return None
    try:
        with warnings.catch_warnings():  # its DeprecationWarning, on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.UNCHANGED,
                                 apply_exif_orientation=True)
    except RuntimeError:  # truncated, corrupt, unsupported, no image extension: PIL reads it or says why not
        return None
    if pixels.shape[0] not in (1, 3):  # CMYK/YCCK: PIL's conversion, as before
        return None
    if expected_size is not None and (pixels.shape[2], pixels.shape[1]) != tuple(expected_size):
        return None  # the json may describe the raw (un-rotated) pixels; PIL checks both
    # Greyscale to RGB repeats the channel, as PIL's convert("RGB") does.
    return pixels.expand(3, -1, -1).to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def _unreadable(path, image_root, error):
    # Pillow names the in-memory buffer it was handed ("<_io.BytesIO object at 0x...>"), not the file.
    reason = "not an image format Pillow reads" if isinstance(error, UnidentifiedImageError) else \
        " ".join(str(error).split())
    if not image_root:  # a file of the user's own, not a dataset's
        return DatasetError(f"cannot read image {path}: {reason}")
    return DatasetError(f"cannot read image {path} (under image_root {image_root}): {reason}; "
                        "replace the file or drop it from the json")


def _read_with_pil(source, path, expected_size, image_root, shrink_to=None):
    if shrink_to is not None:
        return _read_shrunk(source, path, expected_size, image_root, tuple(shrink_to))
    try:
        with Image.open(source) as raw:
            raw.load()
            img = raw
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, image_root, e) from None
    # Honour EXIF rotation as detectron2 does, unless the json describes the raw pixels.
    upright = ImageOps.exif_transpose(img)
    if expected_size is None or upright.size == tuple(expected_size):
        img = upright
    if expected_size is not None and img.size != tuple(expected_size):
        raise _size_mismatch(path, img.size, expected_size)
    return pil_image_to_tensor(img)


def _size_mismatch(path, size, expected_size):
    return DatasetError(f"image {path} is {size[0]}x{size[1]} but its json entry says "
                        f"{expected_size[0]}x{expected_size[1]} (width x height); fix the json or the file")


_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _read_shrunk(source, path, expected_size, image_root, size):
    """_read_with_pil's answer at `size` (the json's orientation), decided from the header before decoding."""
    try:
        with Image.open(source) as raw:
            sideways = raw.getexif().get(0x0112, 1) in _SIDEWAYS
            upright = raw.size[::-1] if sideways else raw.size
            use_upright = upright == tuple(expected_size)
            if not use_upright and raw.size != tuple(expected_size):
                raise _size_mismatch(path, upright, expected_size)
            raw.draft("RGB", size[::-1] if use_upright and sideways else size)  # JPEG: a DCT scale >= size
            raw.load()
            img = ImageOps.exif_transpose(raw) if use_upright else raw
            if img.mode.startswith("I;16"):
                img = img.convert("I")  # resized in 32-bit, still read as 16-bit below
            elif img.mode not in ("RGB", "L", "I"):
                img = img.convert("RGBA" if img.mode == "P" else "RGB").convert("RGB")
            img = img.resize(size, Image.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(path, image_root, e) from None
    return pil_image_to_tensor(img)


def pil_image_to_tensor(img):
    """float32 RGB (3, H, W) in [0, 1] of a PIL image of any mode (16-bit, palette, CMYK, ...)."""
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


def _scaled_polygon(polygon, sx, sy):
    scaled = np.array(polygon, dtype=np.float64)
    scaled[0::2] *= sx
    scaled[1::2] *= sy
    return scaled


# ---------------------------------------------------------------- dataset


_WARNED = set()


class CocoDetection(torch.utils.data.Dataset):
    """A COCO json and its image folder as a map-style dataset.

    dataset[i] -> (image, target): image float32 (3, H, W) in [0, 1]; target has
    boxes (N, 4) xyxy float32, labels int64 in 1..K, area, iscrowd, image_id, and
    masks uint8 (N, H, W) if `with_masks`, keypoints float32 (N, K, 3) if
    `with_keypoints`. Crowd regions and degenerate boxes are never targets; with
    `with_keypoints`, neither are people without a labelled keypoint.
    `filter_empty` drops images left with no target. `check_files` False skips
    checking that every image file exists (for tools that read annotations only).

    Everything per image or annotation lives in numpy arrays (the json's CocoTable,
    shared by every view of that json, plus this view's selection), so forked
    DataLoader workers share it instead of copying it; see annotations.py.
    """

    def __init__(self, json_file, image_root, *, with_masks=False, with_keypoints=False,
                 filter_empty=False, name=None, check_files=True, largest_input=None):
        self.json_file = json_file
        self.largest_input = largest_input  # (short, long) of training's resize: see SHRINK_HEADROOM
        self.image_root = image_root
        self.name = name or json_file
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.table = load_coco_table(json_file)
        self.metadata = _metadata(self.table, json_file, image_root)
        if with_keypoints and not self.metadata.keypoint_names:
            raise UserError(f"{json_file} has no category with 'keypoints', so a keypoint model cannot train on it; "
                            "use a person_keypoints json or a MODEL.META_ARCHITECTURE without keypoints")

        keep, boxes = self._select_annotations()
        # This view's targets: rows self._rows[o[i]:o[i + 1]] of the table for table image i,
        # stored as the dtypes they become in the target (float32 boxes), or narrower.
        self._rows = narrow(np.flatnonzero(keep))
        self._boxes = boxes[keep].astype(np.float32)
        sorted_ids = np.array(sorted(self.metadata.category_id_to_contiguous_id))
        self._labels = narrow(np.searchsorted(sorted_ids, self.table.category_id[self._rows]) + 1)
        per_image = np.bincount(self.table.image_of_rows()[keep], minlength=self.table.num_images)
        self._offsets = narrow(np.concatenate([[0], np.cumsum(per_image)]))
        self._images = narrow(np.flatnonzero(per_image) if filter_empty else np.arange(self.table.num_images))
        if filter_empty and not len(self._images):
            raise UserError(f"{json_file}: no image has a usable annotation (non-crowd, box over "
                            f"{MIN_BOX_SIDE:g} px{', a labelled keypoint' if with_keypoints else ''}); "
                            "fix the annotations or set DATALOADER.FILTER_EMPTY_ANNOTATIONS False")
        if check_files:
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

    @property
    def ids(self):
        """Image ids in dataset order (ascending), as a new list."""
        return self.table.image_id[self._images].tolist()

    def __len__(self):
        return len(self._images)

    def aspect_ratios(self):
        """width / height of every image, in dataset order, from the json alone."""
        return (self.table.width[self._images] / self.table.height[self._images]).tolist()

    def _select_annotations(self):
        """(rows that become targets, clipped xyxy boxes of every row)."""
        t = self.table
        image = t.image_of_rows()
        width, height = t.width[image], t.height[image]
        x, y, w, h = t.bbox.T
        boxes = np.stack([np.clip(x, 0, width), np.clip(y, 0, height),
                          np.clip(x + w, 0, width), np.clip(y + h, 0, height)], axis=1)
        degenerate = ~t.iscrowd & ((boxes[:, 2] - boxes[:, 0] <= MIN_BOX_SIDE)
                                   | (boxes[:, 3] - boxes[:, 1] <= MIN_BOX_SIDE))
        keep = ~t.iscrowd & ~degenerate
        if self.with_keypoints:
            keep &= self._labelled_people(keep)
        if self.with_masks:
            for kind, problem in ((SEGM_NONE, "has no 'segmentation'"),
                                  (SEGM_SHORT, "has only polygons of fewer than 3 points in its 'segmentation'")):
                bad = np.flatnonzero(keep & (t.segm_kind == kind))
                if len(bad):
                    raise UserError(f"{self.json_file}: annotation id {t.ann_id[bad[0]]} {problem} but the model "
                                    "needs masks; add a mask (or remove the annotation), or use "
                                    "MODEL.META_ARCHITECTURE FasterRCNN")
        key = (os.path.abspath(self.json_file), os.stat(self.json_file).st_mtime_ns)
        if degenerate.any() and key not in _WARNED:
            _WARNED.add(key)
            ids = t.ann_id[degenerate]
            logger.warning("%s: ignoring %d of %d non-crowd annotations whose box is at most %g px wide or tall "
                           "after clipping to the image (annotation ids %s%s)", self.json_file, len(ids),
                           int((~t.iscrowd).sum()), MIN_BOX_SIDE, ", ".join(map(str, ids[:5].tolist())),
                           ", ..." if len(ids) > 5 else "")
        return keep, boxes

    def _labelled_people(self, candidates):
        """Of the candidate rows, those with a labelled keypoint; wrong-length keypoints are an error."""
        t, k = self.table, self.metadata.num_keypoints
        lengths = t.kp_end - t.kp_begin
        wrong = np.flatnonzero(candidates & (lengths != 3 * k))
        if len(wrong):
            r = wrong[0]
            raise UserError(f"{self.json_file}: annotation id {t.ann_id[r]} has {lengths[r]} keypoint values, "
                            f"expected {3 * k} (x, y, v for each of {k})")
        rows = np.flatnonzero(candidates)
        visibility = t.kp_values[t.kp_begin[rows, None] + np.arange(2, 3 * k, 3)]
        labelled = np.zeros(t.num_annotations, bool)
        labelled[rows] = (visibility > 0).any(axis=1)
        return labelled

    def _check_image_files(self):
        # One listdir per folder instead of a stat per image: cheap even for COCO
        # train, and a missing file fails now rather than hours into training.
        if not os.path.isdir(self.image_root):
            raise UserError(f"image_root {self.image_root} (for {self.json_file}) is not a folder; "
                            "fix the image root in DATASETS.REGISTER or ZENITH_DATASETS")
        wanted = defaultdict(list)
        for i in self._images:
            path = os.path.join(self.image_root, self.table.file_name(i))
            wanted[os.path.dirname(path)].append(os.path.basename(path))
        missing = []
        for folder, names in wanted.items():
            present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            missing += [os.path.join(folder, n) for n in names if n not in present]
        if missing:
            raise UserError(f"{len(missing)} of {len(self)} images listed in {self.json_file} are missing "
                            f"under image_root {self.image_root} (e.g. {missing[0]}); "
                            "fix the image root or restore them")

    def __getitem__(self, index):
        i = self._images[index]
        width, height = int(self.table.width[i]), int(self.table.height[i])
        path = os.path.join(self.image_root, self.table.file_name(i))
        scale = shrink_factor(width, height, self.largest_input)
        size = (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1 else None
        image = read_image(path, expected_size=(width, height), image_root=self.image_root, shrink_to=size)
        return image, self.target(index, size)

    def target(self, index, size=None):
        """The target dict of dataset[index], without reading the image; `size` (width, height):
        for the image read at that size (coordinates scaled, masks drawn at it)."""
        t, i = self.table, self._images[index]
        height, width = int(t.height[i]), int(t.width[i])
        begin, end = self._offsets[i], self._offsets[i + 1]
        rows = self._rows[begin:end]
        # Copies, never views: a transform writing into a target must not write
        # into the arrays every worker shares.
        target = {
            "boxes": torch.from_numpy(self._boxes[begin:end].copy()).reshape(-1, 4),
            "labels": torch.from_numpy(self._labels[begin:end].astype(np.int64)),
            "area": torch.from_numpy(t.area[rows]),
            "iscrowd": torch.zeros(len(rows), dtype=torch.int64),
            "image_id": torch.tensor(int(t.image_id[i]), dtype=torch.int64),
        }
        sx, sy = (size[0] / width, size[1] / height) if size is not None else (1.0, 1.0)
        out_w, out_h = size if size is not None else (width, height)
        if size is not None:
            target["boxes"] *= torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
            target["area"] = target["area"] * (sx * sy)
        if self.with_masks:
            masks = [self._mask(r, height, width, size) for r in rows]
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, out_h, out_w), dtype=torch.uint8))
        if self.with_keypoints:
            k = self.metadata.num_keypoints
            keypoints = np.array([t.keypoints(r) for r in rows], dtype=np.float32).reshape(-1, k, 3)
            keypoints[..., 0] *= sx  # unlabelled keypoints are (0, 0, 0) and stay so
            keypoints[..., 1] *= sy
            target["keypoints"] = torch.from_numpy(keypoints)
        return target

    def _mask(self, row, height, width, size=None):
        """uint8 (H, W) at the json's size, or at `size` (width, height): polygons are drawn at that
        size; an RLE is decoded and then resized (nearest), one object at a time."""
        out_w, out_h = size if size is not None else (width, height)
        if self.table.segm_kind[row] == SEGM_POLYGONS:
            polygons = self.table.polygons(row)
            if size is not None:
                polygons = [_scaled_polygon(p, out_w / width, out_h / height) for p in polygons]
            rle = mask_util.merge(mask_util.frPyObjects(polygons, out_h, out_w))
        else:  # SEGM_RLE; rows without a usable mask were refused in __init__
            full = mask_util.decode(self.table.rle(row, height, width))
            if size is None:
                return full
            return np.asarray(Image.fromarray(full).resize((out_w, out_h), Image.NEAREST))
        return mask_util.decode(rle)  # uint8 (H, W); np.stack makes the batch C-contiguous
