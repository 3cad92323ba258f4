"""A checkpoint run over image files: pictures and one COCO json (what tools/predict.py does).

    summary = predict_files("model_final.pth", ["a.jpg", "photos/", "shots/*.png"], "out/")

Inputs are files, folders (their images, recursively, by extension) and glob patterns. The
picture of an image is OUTPUT/<its path below the folder given>.png (a file or glob match: its
name), with "-2", "-3", ... where two would share a name. The json holds "images" (id, the
path as found, width, height), "categories" (the checkpoint's) and "annotations" (one per
detection: category_id, bbox, score, and segmentation or keypoints where the model has them),
so both pycocotools' COCO() and tools/eval_coco.py read it. A file that is not a readable image
is skipped with one warning line and counted; nothing else is lost.
"""
import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, List, Tuple

from ..errors import UserError
from ..evaluation import instances_to_coco_json
from ..utils.fileio import atomic_write_json, write_error
from ..visualization import draw_instances, picture_scale, save_png, to_uint8
from .images import load_image
from .predictor import Predictor

__all__ = ["IMAGE_EXTENSIONS", "PredictionSummary", "expand_inputs", "predict_files"]

# What a folder given as input is searched for (case-insensitive), as torchvision's ImageFolder does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class PredictionSummary:
    output: str
    json_path: str
    pictures: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, why)
    detections: int = 0

    def describe(self) -> str:
        lines = [f"{len(self.pictures)} images: {self.detections} detections drawn in {self.output}",
                 f"  results: {self.json_path}"]
        if self.skipped:
            lines.append(f"  skipped: {len(self.skipped)} files that are not readable images "
                         f"(first: {self.skipped[0][0]})")
        return "\n".join(lines)


def expand_inputs(inputs: Iterable[str]) -> List[Tuple[str, str]]:
    """[(image path, picture name without extension)], in the order given, each file once."""
    found = []
    for given in inputs:
        if os.path.isdir(given):
            for root, dirs, files in os.walk(given):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                        path = os.path.join(root, name)
                        found.append((path, os.path.splitext(os.path.relpath(path, given))[0]))
        elif os.path.isfile(given):
            found.append((given, _stem(given)))
        elif glob.has_magic(given):
            matches = [m for m in sorted(glob.glob(given, recursive=True)) if os.path.isfile(m)]
            if not matches:
                raise UserError(f"--input: the pattern {given} matches no file")
            found += [(m, _stem(m)) for m in matches]
        else:
            raise UserError(f"--input: {given} does not exist; give image files, folders or glob patterns")
    if not found:
        raise UserError(f"--input: no images in {' '.join(inputs)} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    out, seen_paths, taken = [], set(), set()
    for path, name in found:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue
        seen_paths.add(real)
        unique, n = name, 1
        while unique.lower() in taken:  # case-insensitive file systems would merge "A" and "a"
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique.lower())
        out.append((path, unique))
    return out


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def predict_files(weights: str, inputs: Iterable[str], output: str, *, json_path: str = None,
                  score_threshold: float = 0.5, device: str = "auto", batch_size: int = 1,
                  progress: bool = True) -> PredictionSummary:
    """Draw and write the detections of `weights` on every image of `inputs` (see the module doc)."""
    files = expand_inputs(inputs)  # a missing input is found before the model is loaded
    predictor = Predictor.from_checkpoint(weights, device=device, score_threshold=score_threshold)
    json_path = json_path or os.path.join(output, "results.json")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise write_error(os.path.join(output, "x.png"), e) from None
    summary = PredictionSummary(output, json_path)
    images, annotations = [], []
    category_ids = predictor.metadata.contiguous_id_to_category_id
    bar = _progress(len(files), progress)
    for start in range(0, len(files), batch_size):
        batch = []
        for path, name in files[start:start + batch_size]:
            try:
                batch.append((path, name, load_image(path)))
            except UserError as e:
                summary.skipped.append((path, str(e)))
                bar.write(f"warning: skipped {path}: {_reason(e, path)}", file=sys.stderr)
        for (path, name, image), found in zip(batch, predictor.predict_tensors([b[2] for b in batch])):
            image_id = len(images) + 1
            height, width = found["image_size"]
            images.append({"id": image_id, "file_name": path, "height": height, "width": width})
            for result in instances_to_coco_json(found, image_id, category_ids):
                x, y, w, h = result["bbox"]
                annotations.append({"id": len(annotations) + 1, **result, "area": w * h, "iscrowd": 0})
            picture = draw_instances(to_uint8(image), _drawn(found), predictor.metadata,
                                     scale=picture_scale(height, width))
            summary.pictures.append(save_png(picture, os.path.join(output, name + ".png")))
            summary.detections += len(found["scores"])
        bar.update(len(files[start:start + batch_size]))
    bar.close()
    atomic_write_json({"info": {"description": f"detections of {weights} (score >= {score_threshold:g})"},
                       "images": images, "categories": _categories(predictor.meta), "annotations": annotations},
                      json_path)
    return summary


def _drawn(found: dict) -> dict:
    """The tensors draw_instances reads; every predicted keypoint is drawn (the third value is a score)."""
    drawn = {k: found[k] for k in ("boxes", "labels", "scores", "masks", "keypoints") if k in found}
    if "keypoints" in drawn:
        drawn["keypoints"] = drawn["keypoints"].clone()
        drawn["keypoints"][..., 2] = 1
    return drawn


def _reason(error: UserError, path: str) -> str:
    """The error's own words without the path it repeats."""
    text = str(error)
    return text.replace(f"cannot read image {path}: ", "").replace(f"image not found: {path}", "not found")


def _categories(meta: dict) -> List[dict]:
    """The checkpoint's categories as a COCO json lists them (keypoints and skeleton on each, for keypoint models)."""
    keypoints = meta.get("keypoints")
    extra = {"keypoints": keypoints["names"], "skeleton": keypoints["skeleton"]} if keypoints else {}
    return [{"id": c["id"], "name": c["name"], **extra} for c in meta["categories"]]


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="image", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
