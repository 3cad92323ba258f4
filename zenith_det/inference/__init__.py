"""Using a trained model: a checkpoint in, predictions out (detectron2's DefaultPredictor).

    from zenith_det import Predictor
    predictor = Predictor.from_checkpoint("output/model_final.pth")
    detections = predictor("photo.jpg")        # boxes, scores, category ids and names, masks / keypoints
    many = predictor.predict_batch(["a.jpg", "b.png"], batch_size=4)

Knows no trainer: the checkpoint's config and meta (zenith_det/modeling/meta.py) are all it reads.
"""
from .checkpoint import InferenceModel, load_for_inference
from .images import load_image
from .predictor import Predictor

__all__ = ["InferenceModel", "Predictor", "load_for_inference", "load_image"]
