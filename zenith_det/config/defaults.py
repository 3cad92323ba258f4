"""Default configuration. Key names follow detectron2 wherever the concept exists.

Every key a YAML file or a command-line override may set must appear here: an
unknown key is an error, so a typo never silently trains the wrong thing.
"""
from fvcore.common.config import CfgNode as CN

_C = CN()

_C.MODEL = CN()
# MaskRCNN | KeypointRCNN | FasterRCNN, all from torchvision.models.detection.
_C.MODEL.META_ARCHITECTURE = "MaskRCNN"
# "auto" picks cuda when it is available, else cpu.
_C.MODEL.DEVICE = "auto"
# A local file: a torchvision detection state dict or one of our checkpoints.
_C.MODEL.WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
# resnet50_fpn (the paper's), resnet18_fpn, or tiny_fpn (a few-channel CNN for CPU tests).
_C.MODEL.BACKBONE.NAME = "resnet50_fpn"
# A local torchvision ImageNet state dict for the backbone, e.g. resnet50-0676ba61.pth.
_C.MODEL.BACKBONE.WEIGHTS = ""
_C.MODEL.BACKBONE.TRAINABLE_LAYERS = 3
# FrozenBN (detectron2's and torchvision's choice with pretrained weights) or BN.
_C.MODEL.BACKBONE.NORM = "FrozenBN"
_C.MODEL.FPN = CN()
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.RPN = CN()
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
_C.MODEL.ROI_KEYPOINT_HEAD = CN()
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (512, 512, 512, 512, 512, 512, 512, 512)

_C.INPUT = CN()
# Training picks one of MIN_SIZE_TRAIN at random per batch, as detectron2 does.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# "horizontal" or "none".
_C.INPUT.RANDOM_FLIP = "horizontal"

_C.DATASETS = CN()
_C.DATASETS.TRAIN = ("coco_2017_train",)
_C.DATASETS.TEST = ("coco_2017_val",)
# [[name, annotation_json, image_root], ...]: any COCO-format data, no code needed.
_C.DATASETS.REGISTER = []

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

_C.SOLVER = CN()
# A key of zenith_det.solver.OPTIMIZER_REGISTRY: SGD, ZENITH, ADAMW, ...
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.BASE_LR = 0.02
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
# Weight decay on the affine parameters of normalization layers.
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# None means the same as WEIGHT_DECAY, as in detectron2.
_C.SOLVER.WEIGHT_DECAY_BIAS = None
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.BETAS = (0.9, 0.999)
_C.SOLVER.EPS = 1e-8
# The global batch over all processes, as in detectron2.
_C.SOLVER.IMS_PER_BATCH = 16
_C.SOLVER.MAX_ITER = 90000
# Wall-clock budget in hours; the run stops at whichever of MAX_ITER and the budget
# comes first, with the final checkpoint and evaluation inside the budget. 0 = none.
_C.SOLVER.MAX_TIME_HOURS = 24.0
# WarmupMultiStepLR | WarmupCosineLR | WarmupConstantLR. "" picks the optimizer's
# default: constant for ZENITH (it is its own schedule), multi-step otherwise.
_C.SOLVER.LR_SCHEDULER_NAME = ""
_C.SOLVER.STEPS = (60000, 80000)
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.WARMUP_FACTOR = 0.001
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# How many periodic checkpoints to keep on disk.
_C.SOLVER.MAX_TO_KEEP = 3
# Stop with an error after this many consecutive steps with a non-finite loss.
_C.SOLVER.MAX_NONFINITE_STEPS = 20
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
# "norm" (global norm over all parameters) or "value".
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
# float16 (with a GradScaler) or bfloat16.
_C.SOLVER.AMP.DTYPE = "float16"
_C.SOLVER.ZENITH = CN()
_C.SOLVER.ZENITH.WINDOW = 500
# How the window starts (the paper does not say): "full" (multiplier 1 until W norms are
# held), "partial" (mean of the norms so far, Z from the first step), or "after_warmup"
# (the SOLVER.WARMUP_ITERS first norms never enter the window). The default is the
# solver's (zenith_det.solver.norm_history.DEFAULT_START, which says why).
_C.SOLVER.ZENITH.START = "full"

_C.TEST = CN()
# Evaluate every this many iterations (0 = off) ...
_C.TEST.EVAL_PERIOD = 0
# ... and/or every this many minutes of wall clock (0 = off). Always at the end.
_C.TEST.EVAL_PERIOD_MINUTES = 0.0
# After each evaluation, the first this many images of the first DATASETS.TEST dataset go to
# TensorBoard with the model's predictions, beside their ground truth (0 = off).
_C.TEST.VIS_IMAGES = 4
_C.TEST.IMS_PER_BATCH = 4
_C.TEST.DETECTIONS_PER_IMAGE = 100
# pycocotools or faster_coco_eval.
_C.TEST.EVALUATOR_BACKEND = "pycocotools"
# Per-keypoint OKS sigmas; empty means COCO's 17.
_C.TEST.KEYPOINT_OKS_SIGMAS = []
# How the model's labels find the test data's categories (zenith_det/data/categories.py):
# "exact": the test json must have the training json's categories, same ids and names
# (and keypoint names), else the evaluation is refused; "name": each label goes to the
# test category of its name (table logged), a category the test data lacks is dropped.
_C.TEST.CATEGORY_MATCH = "exact"
# Recompute BatchNorm statistics over NUM_ITER training batches before each evaluation
# (detectron2's PreciseBN). Always done for optimizers that evaluate other weights than
# they train (schedule-free: OptimizerSpec.bn_stats_at_eval_weights).
_C.TEST.PRECISE_BN = CN()
_C.TEST.PRECISE_BN.ENABLED = False
_C.TEST.PRECISE_BN.NUM_ITER = 200

_C.OUTPUT_DIR = "./output"
# Negative means a random seed, logged so the run can be repeated.
_C.SEED = -1
# Deterministic kernels, for bit-exact resume checks; slower.
_C.DETERMINISTIC = False
# Log every this many iterations.
_C.LOG_PERIOD = 20
