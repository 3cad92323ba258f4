"""torchvision Mask / Keypoint / Faster R-CNN built from the config and the dataset's metadata."""
import logging

import torch
import torchvision
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes, resize_keypoints

from ..config.architectures import architecture_targets
from ..errors import UserError
from ..utils.fileio import load_torch_file
from .backbone import build_backbone

logger = logging.getLogger(__name__)



class TrainTestResize(GeneralizedRCNNTransform):
    """torchvision's transform with detectron2's separate train and test sizes.

    Training draws the short side from INPUT.MIN_SIZE_TRAIN (torch RNG, so a resumed
    run draws the same); evaluation uses INPUT.MIN_SIZE_TEST.

    With `paste_masks` False (inference_on_dataset sets it while a COCOEvaluator
    collects the outputs) the masks are not pasted into the image: an output holds
    the mask head's "mask_probs" (N,1,28,28) and the original "image_size" (h, w)
    instead of "masks" (N,1,h,w), and the evaluator pastes them inside the boxes
    only, into the same RLEs (zenith_det/evaluation/masks.py).
    """

    def __init__(self, cfg, **kwargs):
        self._sizes = {
            True: (tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN),
            False: ((cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST),
        }
        super().__init__(*self._sizes[True], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], **kwargs)
        self.paste_masks = True

    def train(self, mode: bool = True):
        self.min_size, self.max_size = self._sizes[mode]
        return super().train(mode)

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training or self.paste_masks or torchvision._is_tracing():
            return super().postprocess(result, image_shapes, original_image_sizes)
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["mask_probs"] = pred.pop("masks")
                pred["image_size"] = (int(o_im_s[0]), int(o_im_s[1]))
            if "keypoints" in pred:
                pred["keypoints"] = resize_keypoints(pred["keypoints"], im_s, o_im_s)
        return result


def build_model(cfg, metadata) -> torch.nn.Module:
    """`metadata` gives num_classes (without background) and num_keypoints."""
    arch = cfg.MODEL.META_ARCHITECTURE
    architecture_targets(arch)  # an unknown name: one line listing the known ones
    backbone = build_backbone(cfg)
    channels = backbone.out_channels
    num_classes = metadata.num_classes + 1
    fc = cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    kwargs = dict(
        num_classes=None,
        box_head=TwoMLPHead(channels * 7 * 7, fc),
        box_predictor=FastRCNNPredictor(fc, num_classes),
        rpn_pre_nms_top_n_train=cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN,
        rpn_pre_nms_top_n_test=cfg.MODEL.RPN.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_test=cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        rpn_batch_size_per_image=cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE,
        box_batch_size_per_image=cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
        box_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        box_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
    if arch == "MaskRCNN":
        dim, n = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, cfg.MODEL.ROI_MASK_HEAD.NUM_CONV
        model = MaskRCNN(
            backbone,
            mask_head=MaskRCNNHeads(channels, (dim,) * n, 1),
            mask_predictor=MaskRCNNPredictor(dim, dim, num_classes),
            **kwargs,
        )
    elif arch == "KeypointRCNN":
        if not metadata.num_keypoints:
            raise UserError("MODEL.META_ARCHITECTURE KeypointRCNN needs a dataset whose categories define keypoints (DATASETS.TRAIN)")
        dims = tuple(cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS)
        model = KeypointRCNN(
            backbone,
            keypoint_head=KeypointRCNNHeads(channels, dims),
            keypoint_predictor=KeypointRCNNPredictor(dims[-1], metadata.num_keypoints),
            **kwargs,
        )
    else:
        model = FasterRCNN(backbone, **kwargs)
    model.transform = TrainTestResize(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    return model


# MODEL.WEIGHTS must set at least this share of the model's tensors (by name and shape).
# Fine-tuning on other classes replaces only the predictors (a handful of tensors);
# below half, the file is almost surely for another model or another key.
MIN_LOADED_FRACTION = 0.5


def load_weights(model: torch.nn.Module, path: str) -> None:
    """A torchvision detection state dict or one of our checkpoints (weights_only loading).

    Tensors whose name or shape differ (another dataset's predictors) are skipped and
    logged; a file that fits less than MIN_LOADED_FRACTION of the model is refused.
    """
    state = load_torch_file(path, "MODEL.WEIGHTS")
    if not isinstance(state, dict):
        raise UserError(f"MODEL.WEIGHTS: {path} holds a {type(state).__name__}, not a state dict or checkpoint")
    if isinstance(state.get("model"), dict):  # one of our checkpoints
        state = state["model"]
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if torch.is_tensor(v) and k in own and v.shape == own[k].shape}
    logger.info("MODEL.WEIGHTS: loaded %d of %d tensors from %s", len(fits), len(own), path)
    if len(fits) < MIN_LOADED_FRACTION * len(own):
        hint = (
            "it looks like an ImageNet backbone: give it as MODEL.BACKBONE.WEIGHTS" if _looks_like_backbone(state)
            else "is it for another architecture or backbone (MODEL.META_ARCHITECTURE, MODEL.BACKBONE.NAME)? "
                 "An ImageNet backbone goes in MODEL.BACKBONE.WEIGHTS"
        )
        raise UserError(
            f"MODEL.WEIGHTS: {path} fits only {len(fits)} of the model's {len(own)} tensors "
            f"(at least {MIN_LOADED_FRACTION:.0%} must match by name and shape); {hint}"
        )
    skipped = sorted(set(own) - set(fits))
    if skipped:
        logger.warning("MODEL.WEIGHTS: %d tensors keep their initial values (not in %s or of another shape), e.g. %s",
                       len(skipped), path, ", ".join(skipped[:3]))
    model.load_state_dict(fits, strict=False)


def _looks_like_backbone(state: dict) -> bool:
    return "conv1.weight" in state and "fc.weight" in state
