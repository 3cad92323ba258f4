"""Detections written with their own images and categories (tools/predict.py's json), read
against a ground truth: each image is matched by file name, and its detections get that
ground truth's image id. The result is an ordinary COCO results list."""
import os
from typing import Dict, List

from ..errors import UserError

__all__ = ["is_predictions_file", "results_for_ground_truth"]


def is_predictions_file(data) -> bool:
    """A json object with images, categories and annotations that all carry a score."""
    return (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "categories", "annotations"))
            and all(isinstance(a, dict) and "score" in a for a in data["annotations"]))


def _key(path: str) -> str:
    return os.path.normpath(str(path)).replace(os.sep, "/")


def results_for_ground_truth(data: dict, coco_gt, source: str) -> List[Dict]:
    """The detections of `data` with the ids of `coco_gt`'s images of the same file name (a
    predicted image's path ends with the ground truth's file_name); one line for an image the
    ground truth lacks, or that two of its images could be."""
    gt_images = coco_gt.dataset.get("images", [])
    by_name = {}
    for image in gt_images:
        by_name.setdefault(os.path.basename(_key(image["file_name"])), []).append(image)
    ids = {}
    for image in data["images"]:
        if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
            raise UserError(f"{source}: images entry {image!r} needs an id and a file_name")
        path = _key(image["file_name"])
        found = [g for g in by_name.get(os.path.basename(path), [])
                 if path == _key(g["file_name"]) or path.endswith("/" + _key(g["file_name"]))]
        gt_source = getattr(coco_gt, "zenith_source", "the ground truth")
        if len(found) != 1:
            what = "no image" if not found else f"{len(found)} images ({', '.join(g['file_name'] for g in found)})"
            raise UserError(f"{source}: image {image['file_name']} matches {what} of {gt_source} by file name; "
                            "predict on the ground truth's own images, or evaluate against their json")
        if found[0]["id"] in ids.values():
            raise UserError(f"{source}: two of its images are {found[0]['file_name']} of {gt_source}; "
                            "predict on each image once")
        ids[image["id"]] = found[0]["id"]
    keep = ("category_id", "bbox", "score", "segmentation", "keypoints")
    results = []
    for i, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in ids:
            raise UserError(f"{source}: annotations[{i}] has image_id {ann.get('image_id')!r}, which its images "
                            "do not list")
        results.append({"image_id": ids[ann["image_id"]], **{k: ann[k] for k in keep if k in ann}})
    return results
