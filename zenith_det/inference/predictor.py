"""Predictor: a trained model called on images, as detectron2's DefaultPredictor.

    predictor = Predictor.from_checkpoint("model_final.pth", score_threshold=0.5)
    out = predictor("photo.jpg")
    for box, name, score in zip(out["boxes"], out["names"], out["scores"]): ...

Each call returns one dict per image, in the image's own pixels:
  "boxes" (N, 4) float32 xyxy, "scores" (N,), "labels" (N,) int64 1..K (the model's),
  "category_ids" (N,) int64 (the training json's ids), "names" [N str],
  "masks" (N, H, W) bool for Mask R-CNN, "keypoints" (N, K, 3) x, y, score for Keypoint R-CNN,
  and "image_size" (H, W).
The model resizes and normalises as in test (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
"""
from typing import Dict, Iterable, List, Optional

import torch

from ..config import CfgNode
from ..evaluation.conversion import MASK_THRESHOLD
from .checkpoint import InferenceModel, load_for_inference
from .images import load_image

__all__ = ["Predictor"]


class Predictor:
    """A model on a device, called on images: `predictor(image)` or `predictor.predict_batch(images)`.

    `Predictor(cfg)` builds the model `cfg` describes and loads cfg.MODEL.WEIGHTS (a checkpoint
    or a torchvision state dict), as detectron2's DefaultPredictor; `Predictor.from_checkpoint(path)`
    needs the checkpoint alone. Detections scoring below `score_threshold` are dropped inside the
    model (torchvision's box_score_thresh).
    """

    def __init__(self, cfg: CfgNode, *, device: Optional[str] = None, score_threshold: Optional[float] = None):
        self._init(load_for_inference(cfg.MODEL.WEIGHTS, cfg, device, field="MODEL.WEIGHTS"),
                   cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST if score_threshold is None else score_threshold)

    @classmethod
    def from_checkpoint(cls, path: str, device: Optional[str] = None, score_threshold: float = 0.05) -> "Predictor":
        predictor = cls.__new__(cls)
        predictor._init(load_for_inference(path, None, "auto" if device is None else device), score_threshold)
        return predictor

    def _init(self, loaded: InferenceModel, score_threshold: float) -> None:
        if not 0 <= float(score_threshold) <= 1:
            raise ValueError(f"score_threshold is {score_threshold}; give a score in [0, 1]")
        self.loaded = loaded
        self.model, self.cfg, self.metadata, self.meta, self.device = \
            loaded.model, loaded.cfg, loaded.metadata, loaded.meta, loaded.device
        self.score_threshold = float(score_threshold)
        self.model.roi_heads.score_thresh = self.score_threshold
        # label k -> (json id, name), as tensors and a list, built once
        self._category_ids = torch.tensor([0] + [c["id"] for c in self.meta["categories"]], dtype=torch.int64)
        self._names = [""] + [c["name"] for c in self.meta["categories"]]

    @property
    def class_names(self) -> List[str]:
        return self._names[1:]

    def __call__(self, image, format: str = "RGB") -> Dict:
        return self.predict_batch([image], batch_size=1, format=format)[0]

    def predict_batch(self, images: Iterable, batch_size: int = 8, format: str = "RGB") -> List[Dict]:
        """One dict per image, in order; `batch_size` images go through the model together."""
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}; give 1 or more")
        out, batch = [], []
        for image in images:
            batch.append(load_image(image, format))
            if len(batch) == batch_size:
                out += self.predict_tensors(batch)
                batch = []
        if batch:
            out += self.predict_tensors(batch)
        return out

    @torch.inference_mode()
    def predict_tensors(self, images: List[torch.Tensor]) -> List[Dict]:
        """The model on float RGB (3, H, W) tensors in [0, 1] (load_image's)."""
        if not images:
            return []
        outputs = self.model([im.to(self.device, non_blocking=True) for im in images])
        return [self._detections(o, tuple(im.shape[1:])) for o, im in zip(outputs, images)]

    def _detections(self, output: Dict[str, torch.Tensor], size) -> Dict:
        labels = output["labels"].cpu()
        result = {
            "boxes": output["boxes"].float().cpu(),
            "scores": output["scores"].float().cpu(),
            "labels": labels,
            "category_ids": self._category_ids[labels],
            "names": [self._names[k] for k in labels.tolist()],
            "image_size": size,
        }
        if "masks" in output:  # pasted probabilities (N, 1, H, W), cut as the evaluation cuts them
            result["masks"] = (output["masks"][:, 0] >= MASK_THRESHOLD).cpu()
        if "keypoints" in output:
            keypoints = output["keypoints"].float().cpu().clone()
            keypoints[..., 2] = output["keypoints_scores"].float().cpu()
            result["keypoints"] = keypoints
        return result
