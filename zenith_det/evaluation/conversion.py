"""Model outputs (torchvision convention) -> COCO results-format dicts."""
from typing import Dict, List, Mapping, Optional

import pycocotools.mask as mask_util
import torch

from ..errors import UserError
from . import masks as _masks

# detectron2's paste_masks_in_image keeps pixels >= 0.5; we match it so that
# our segm numbers are comparable with detectron2's.
MASK_THRESHOLD = _masks.MASK_THRESHOLD


def encode_masks(masks: torch.Tensor) -> List[dict]:
    """COCO RLEs (str counts, json-ready) of N masks given as (N,H,W) or (N,1,H,W).

    Float masks are probabilities, thresholded at MASK_THRESHOLD; bool masks are
    taken as they are. One pycocotools call encodes them all.
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.shape[0] == 0:
        return []
    if masks.dtype != torch.bool:
        masks = masks >= MASK_THRESHOLD
    # pycocotools wants a Fortran-ordered (H,W,N) uint8 array. Laying the data out
    # as C-ordered (N,W,H) -- on the model's device, before the copy to the host --
    # makes its numpy transpose exactly that, so the host does no extra copy.
    arr = masks.view(torch.uint8).transpose(1, 2).contiguous().cpu().numpy().transpose(2, 1, 0)
    rles = mask_util.encode(arr)
    for rle in rles:
        # bytes are not json-serialisable; pycocotools reads str counts back fine.
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def compress_segmentation(segm, height: int, width: int) -> dict:
    """Polygons [[x1, y1, ...], ...] or an RLE with a list of run lengths, as the RLE with
    string counts that both backends' loadRes need (they take nothing else in results)."""
    if isinstance(segm, dict) and isinstance(segm["counts"], (str, bytes)):
        rle = dict(segm)
    elif isinstance(segm, dict):
        rle = mask_util.frPyObjects(segm, height, width)
    else:
        rle = mask_util.merge(mask_util.frPyObjects([[float(v) for v in p] for p in segm], height, width))
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instances_to_coco_json(
    output: Mapping[str, torch.Tensor],
    image_id: int,
    contiguous_id_to_category_id: Mapping[int, int],
) -> List[Dict]:
    """One image's detections as COCO results: one dict per instance.

    Boxes become xywh, labels the json's category ids; masks (if present) RLE;
    keypoints (if present) flat [x, y, score, ...] with the per-keypoint score in
    the third slot, as detectron2 writes them (COCOeval reads only x and y).

    Masks come either pasted, as "masks" (N,1,H,W), or as the model's "mask_probs"
    (N,1,M,M) with the image's "image_size" (h, w), which our models hand over
    during evaluation (see TrainTestResize): they are pasted here, inside the boxes
    only, into the same RLEs (masks.py).
    """
    if int(output["boxes"].shape[0]) == 0:
        return []
    return coco_result_dicts(output, image_id, contiguous_id_to_category_id, output_rles(output))


def output_rles(output: Mapping[str, torch.Tensor]) -> Optional[List[dict]]:
    """The RLEs of one image's masks ("masks" or "mask_probs"), or None without masks."""
    if "masks" in output:
        return encode_masks(output["masks"].detach())
    if "mask_probs" in output:
        return _masks.mask_probs_to_rles(output["mask_probs"].detach(), output["boxes"].detach(), output["image_size"])
    return None


def coco_result_dicts(
    output: Mapping[str, torch.Tensor],
    image_id: int,
    contiguous_id_to_category_id: Mapping[int, int],
    rles: Optional[List[dict]] = None,
) -> List[Dict]:
    """instances_to_coco_json with the masks' RLEs given (None: no segmentation). Each field
    leaves the tensors in one tolist() per image.

    A label that `contiguous_id_to_category_id` maps to None (a category the test data
    lacks, see data/categories.py) has its detections dropped; a label it does not
    have at all is a UserError (the model does not fit the dataset).
    """
    boxes = output["boxes"]
    if int(boxes.shape[0]) == 0:
        return []
    boxes = boxes.detach().to("cpu", torch.float32).clone()
    boxes[:, 2:] -= boxes[:, :2]
    scores = output["scores"].detach().to("cpu", torch.float64).tolist()  # float64 holds float32 exactly
    labels = output["labels"].detach().cpu().tolist()
    try:
        category_ids = [contiguous_id_to_category_id[int(label)] for label in labels]
    except KeyError as e:
        raise UserError(
            f"the model predicted label {e.args[0]}, but the dataset has contiguous ids "
            f"{min(contiguous_id_to_category_id, default=None)}..{max(contiguous_id_to_category_id, default=None)}: "
            "the model's number of classes must equal the dataset's categories + 1 (check MODEL.WEIGHTS)"
        ) from None

    image_id = int(image_id)
    results = [
        {"image_id": image_id, "category_id": None if cat is None else int(cat), "bbox": box, "score": score}
        for cat, box, score in zip(category_ids, boxes.tolist(), scores)
    ]
    if rles is not None:
        for res, rle in zip(results, rles):
            res["segmentation"] = rle
    if "keypoints" in output:
        kpts = output["keypoints"].detach().to("cpu", torch.float32).clone()
        if "keypoints_scores" in output:
            kpts[..., 2] = output["keypoints_scores"].detach().to("cpu", torch.float32)
        for res, kp in zip(results, kpts.flatten(1).tolist()):
            res["keypoints"] = kp
    if None in category_ids:  # labels of categories the test data lacks (TEST.CATEGORY_MATCH name): dropped
        results = [r for r in results if r["category_id"] is not None]
    return results


def infer_tasks(output: Mapping[str, torch.Tensor]) -> set:
    """The COCO tasks one model output supports: bbox always, segm and keypoints when present."""
    tasks = {"bbox"}
    if "masks" in output or "mask_probs" in output:
        tasks.add("segm")
    if "keypoints" in output:
        tasks.add("keypoints")
    return tasks


def results_tasks(results: List[Dict]) -> List[str]:
    """The tasks a COCO results list supports (every result carries the field)."""
    if not results:
        return ["bbox"]
    fields = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}
    return [task for task, field in fields.items() if all(field in r for r in results)]
