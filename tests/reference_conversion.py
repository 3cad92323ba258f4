"""The COCO results path before masks were pasted inside their boxes only, frozen as the reference.

The model pasted every mask into a full float image (torchvision's transform.postprocess
with paste_masks_in_image), then zenith_det.evaluation.conversion thresholded and
RLE-encoded the full images and built the result dicts. tests/test_mask_crops.py checks
that the path we ship (zenith_det/evaluation/masks.py) gives the same results, byte for
byte; benchmarks/benchmark_eval.py --postprocess times this path, stage by stage, as its
"before" column. Not to be changed: it is what the new path is held to.
"""
import pycocotools.mask as mask_util
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image


def paste(output, image_size):
    return paste_masks_in_image(output["mask_probs"], output["boxes"], image_size)


def threshold(masks):
    return masks[:, 0] >= 0.5


def encode(masks):
    arr = masks.to(torch.uint8).transpose(1, 2).contiguous().cpu().numpy().transpose(2, 1, 0)
    rles = mask_util.encode(arr)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def dicts(output, image_id, contiguous_id_to_category_id, rles):
    boxes = output["boxes"]
    if int(boxes.shape[0]) == 0:
        return []
    boxes = boxes.detach().to("cpu", torch.float32).clone()
    boxes[:, 2:] -= boxes[:, :2]
    scores = output["scores"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    category_ids = [int(contiguous_id_to_category_id[int(label)]) for label in labels]
    results = [
        {"image_id": int(image_id), "category_id": cat, "bbox": box, "score": float(score)}
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
    return results


def instances_to_coco_json(output, image_id, contiguous_id_to_category_id, image_size):
    """The previous path's COCO results for an output with unpasted masks (the model pasting them)."""
    if int(output["boxes"].shape[0]) == 0:
        return []
    rles = encode(threshold(paste(output, image_size))) if "mask_probs" in output else None
    return dicts(output, image_id, contiguous_id_to_category_id, rles)
