"""Pictures of what the model sees and predicts: ground truth and predictions drawn on an image.

The drawing is torchvision's (draw_bounding_boxes, draw_segmentation_masks,
draw_keypoints); this module only decides what goes on the picture:

  load_ground_truth(dataset, index)    the image and every annotation of the json, crowd regions too
  results_to_instances(results, ...)   COCO results dicts (a results json, or instances_to_coco_json
                                       of a model output) as instances of a dataset's categories
  draw_instances(image, instances, metadata, score_threshold=..., scale=...)
  side_by_side(left, right)            ground truth | predictions
  save_png(image, path)

Instances are a dict of tensors: "boxes" (N, 4) xyxy, "labels" (N,) the dataset's
contiguous ids 1..K (metadata.thing_classes[label - 1] is the name), and optionally
"scores" (N,), "iscrowd" (N,) bool, "masks" (N, H, W) bool, "keypoints" (N, K, 3)
with x, y and v (drawn where v > 0). A category has one colour in the ground
truth and in the predictions. Crowd regions get CROWD_COLOR, a box labelled
"crowd" and a hatched tint (every other diagonal stripe of the region). Keypoints
are KEYPOINT_COLOR dots joined by the metadata's skeleton (SKELETON_COLOR lines).
Knows nothing of the trainer.
"""
import inspect
import os
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_util
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from .data.annotations import SEGM_POLYGONS, SEGM_RLE
from .errors import UserError
from .evaluation.conversion import compress_segmentation
from .utils.fileio import write_error

__all__ = ["CLASS_COLORS", "CROWD_COLOR", "KEYPOINT_COLOR", "SKELETON_COLOR", "MASK_ALPHA", "class_color",
           "load_ground_truth", "results_to_instances", "draw_instances", "side_by_side", "to_uint8", "save_png",
           "image_name", "picture_scale", "PICTURE_MIN_SIDE", "PICTURE_MAX_SIDE"]

# tab10 (matplotlib's default cycle): label k gets CLASS_COLORS[(k - 1) % 10].
CLASS_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
CROWD_COLOR = (255, 0, 255)
KEYPOINT_COLOR = (255, 255, 0)
SKELETON_COLOR = (255, 255, 255)  # what draw_keypoints draws its lines with (PIL's default ink)
MASK_ALPHA = 0.5


def class_color(label: int) -> tuple:
    return CLASS_COLORS[(int(label) - 1) % len(CLASS_COLORS)]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 of a float image in [0, 1] (read_image's) or of a uint8 one."""
    if image.dtype == torch.uint8:
        return image.cpu()
    return image.detach().cpu().float().mul(255).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- what to draw


def load_ground_truth(dataset, index: int):
    """(image uint8 (3, H, W), instances) of dataset[index] (a CocoDetection), with every
    annotation its json holds for the image: crowd regions and tiny boxes too, which are
    never training targets. Read from the dataset's table, so any view of the json will do."""
    image, target = dataset[index]
    t = dataset.table
    i = int(np.searchsorted(t.image_id, int(target["image_id"])))
    height, width = int(t.height[i]), int(t.width[i])
    rows = range(int(t.ann_offsets[i]), int(t.ann_offsets[i + 1]))
    metadata = dataset.metadata
    boxes = torch.from_numpy(t.bbox[list(rows)].astype(np.float32)).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    instances = {
        "boxes": boxes,
        "labels": torch.tensor([metadata.category_id_to_contiguous_id[int(t.category_id[r])] for r in rows],
                               dtype=torch.int64),
        "iscrowd": torch.from_numpy(t.iscrowd[list(rows)].astype(bool)),
        "masks": torch.from_numpy(np.stack([_mask(t, r, height, width) for r in rows])
                                  if len(rows) else np.zeros((0, height, width), np.uint8)).bool(),
    }
    k = metadata.num_keypoints
    if k:
        keypoints = np.zeros((len(rows), k, 3), np.float32)
        for n, r in enumerate(rows):
            values = t.keypoints(r)
            if len(values) == 3 * k:
                keypoints[n] = values.reshape(k, 3)
        instances["keypoints"] = torch.from_numpy(keypoints)
    return to_uint8(image), instances


def _mask(table, row, height, width):
    kind = table.segm_kind[row]
    if kind == SEGM_POLYGONS:
        return mask_util.decode(mask_util.merge(mask_util.frPyObjects(table.polygons(row), height, width)))
    if kind == SEGM_RLE:
        return mask_util.decode(table.rle(row, height, width))
    return np.zeros((height, width), np.uint8)  # no segmentation: a box only


def results_to_instances(results: List[Dict], metadata, height: int, width: int, source: str = "the results"):
    """One image's COCO results dicts ("category_id", "bbox" xywh, "score", and optionally
    "segmentation" RLE and "keypoints" [x, y, score, ...]) as instances of `metadata`'s
    categories. Every predicted keypoint is drawn (its third value is a score, not a visibility).

    A category id the dataset does not have is a UserError naming `source`.
    """
    labels = []
    for r in results:
        if r["category_id"] not in metadata.category_id_to_contiguous_id:
            raise UserError(f"{source}: a detection of image {r.get('image_id')} has category_id {r['category_id']}, "
                            f"which {metadata.json_file} does not have; use the results of a model of these categories")
        labels.append(metadata.category_id_to_contiguous_id[r["category_id"]])
    boxes = torch.tensor([r["bbox"] for r in results], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    instances = {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64),
                 "scores": torch.tensor([float(r["score"]) for r in results], dtype=torch.float32)}
    if results and all("segmentation" in r for r in results):
        rles = [compress_segmentation(r["segmentation"], height, width) for r in results]  # polygons too
        instances["masks"] = torch.from_numpy(mask_util.decode(rles)).permute(2, 0, 1).bool()
    if results and all("keypoints" in r for r in results):
        keypoints = torch.tensor([r["keypoints"] for r in results], dtype=torch.float32).reshape(len(results), -1, 3)
        keypoints[..., 2] = 1
        instances["keypoints"] = keypoints
    return instances


# ---------------------------------------------------------------- drawing


def draw_instances(image: torch.Tensor, instances: Dict[str, torch.Tensor], metadata, *,
                   score_threshold: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """`image` with `instances` drawn on it: masks tinted, then boxes with "name" (ground truth)
    or "name score" (predictions), then keypoints and their skeleton. Instances scoring below
    `score_threshold` are left out. `scale` enlarges the picture (and its lines) first.
    Returns uint8 (3, H * scale, W * scale)."""
    image = to_uint8(image).clone()  # drawn into in place below; the caller keeps its image
    inst = {k: v.detach().cpu() for k, v in instances.items()}
    if "scores" in inst:
        keep = inst["scores"] >= score_threshold
        inst = {k: v[keep] for k, v in inst.items()}
    if scale != 1:
        image, inst = _rescale(image, inst, scale)
    line = max(1, round(scale))
    n = len(inst["boxes"])
    crowd = inst["iscrowd"].tolist() if "iscrowd" in inst else [False] * n
    colors = [CROWD_COLOR if c else class_color(label) for c, label in zip(crowd, inst["labels"].tolist())]

    if "masks" in inst:
        stripes = _hatch(*image.shape[1:], period=2 * line)
        for mask, color, is_crowd in zip(inst["masks"], colors, crowd):
            mask = mask & stripes if is_crowd else mask
            ys, xs = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
            if len(ys):  # one call per mask (torchvision blackens where masks of one call overlap), on its box
                y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
                image[:, y0:y1, x0:x1] = draw_segmentation_masks(image[:, y0:y1, x0:x1].contiguous(),
                                                                 mask[y0:y1, x0:x1], alpha=MASK_ALPHA, colors=[color])

    if n:
        names = [metadata.thing_classes[label - 1] for label in inst["labels"].tolist()]
        texts = [f"{name} crowd" if c else name for name, c in zip(names, crowd)]
        if "scores" in inst:
            texts = [f"{text} {score:.2f}" for text, score in zip(texts, inst["scores"].tolist())]
        boxes = inst["boxes"].clone()
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])  # a box of negative size: drawn as a point
        image = draw_bounding_boxes(image, boxes, labels=texts, colors=colors, width=line, **_LABEL_STYLE)

    if "keypoints" in inst and n:
        image = _draw_keypoints(image, inst["keypoints"], metadata.keypoint_skeleton, radius=2 * line, width=line)
    return image


# Labels in black on the box's colour where torchvision can (0.20 on), else in the box's colour.
_LABEL_STYLE = {"fill_labels": True} if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters else {}


def _hatch(height, width, period):
    """Diagonal stripes, `period` pixels wide, of a crowd region's tint."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((xx + yy) // period) % 2 == 0


def _draw_keypoints(image, keypoints, skeleton, radius, width):
    """Lines of the skeleton (1-based pairs, as in the json) between labelled keypoints, then
    the keypoints over them; per instance, so unlabelled ones (v == 0) are left out on every
    torchvision (draw_keypoints' `visibility` is recent)."""
    points = []
    for kps in keypoints:
        visible = torch.nonzero(kps[:, 2] > 0).flatten().tolist()
        if not visible:
            continue
        position = {k: n for n, k in enumerate(visible)}
        xy = kps[visible, :2][None]
        pairs = [(position[a - 1], position[b - 1]) for a, b in skeleton if a - 1 in position and b - 1 in position]
        if pairs:
            image = draw_keypoints(image, xy, connectivity=pairs, colors=KEYPOINT_COLOR, radius=0, width=width)
        points.append(xy[0])
    if points:
        image = draw_keypoints(image, torch.cat(points)[None], colors=KEYPOINT_COLOR, radius=radius)
    return image


def _rescale(image, inst, scale):
    height, width = round(image.shape[1] * scale), round(image.shape[2] * scale)
    image = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    image = image.round().clamp(0, 255).to(torch.uint8)
    inst = dict(inst, boxes=inst["boxes"] * scale)
    if "masks" in inst:
        masks = inst["masks"]
        inst["masks"] = (F.interpolate(masks[None].float(), size=(height, width), mode="nearest")[0].bool() if len(masks)
                         else torch.zeros((0, height, width), dtype=torch.bool))
    if "keypoints" in inst:
        keypoints = inst["keypoints"].clone()
        keypoints[..., :2] *= scale
        inst["keypoints"] = keypoints
    return image, inst


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """uint8 (3, max(H), W_left + gap + W_right): `left` | white gap | `right`, top-aligned."""
    height = max(left.shape[1], right.shape[1])
    out = torch.full((3, height, left.shape[2] + gap + right.shape[2]), 255, dtype=torch.uint8)
    out[:, :left.shape[1], :left.shape[2]] = left
    out[:, :right.shape[1], left.shape[2] + gap:] = right
    return out


def save_png(image: torch.Tensor, path: str) -> str:
    """Write a (3, H, W) uint8 image as a PNG; a failed write is one line (UserError)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(path, format="PNG")
    except OSError as e:
        raise write_error(path, e) from e
    return path


def image_name(dataset, image_id: int) -> str:
    """The json's file name of an image of `dataset` (a CocoDetection), without extension, with its
    folders below the image root: "a/x.jpg" and "b/x.jpg" keep pictures of their own. Parts that
    would leave the output folder ("..", a leading "/") are dropped."""
    t = dataset.table
    name = t.file_name(int(np.searchsorted(t.image_id, int(image_id)))).replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return os.path.join(*parts[:-1], os.path.splitext(parts[-1])[0]) if parts else str(int(image_id))


# A picture's longest side: small images are enlarged to at least PICTURE_MIN_SIDE by default, so
# the labels do not cover what they name; no scale may make it longer than PICTURE_MAX_SIDE.
PICTURE_MIN_SIDE = 512
PICTURE_MAX_SIDE = 8192


def picture_scale(height: int, width: int, scale=None) -> float:
    """The factor a picture of this image is drawn at: `scale`, or by default enough to bring its
    longest side to PICTURE_MIN_SIDE (never below 1). A UserError where it would exceed PICTURE_MAX_SIDE."""
    longest = max(height, width)
    if scale is None:
        return max(1.0, PICTURE_MIN_SIDE / longest)
    if longest * scale > PICTURE_MAX_SIDE:
        raise UserError(f"--scale {scale:g} would draw a {width}x{height} image {longest * scale:.0f} px long; "
                        f"the longest side may be at most {PICTURE_MAX_SIDE} px: give a smaller --scale")
    return float(scale)
