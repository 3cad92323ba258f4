"""Mask R-CNN R50-FPN with ZENITH, as a detectron2 LazyConfig.

detectron2's model-zoo COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py with
its SGD replaced by ZENITH and its step schedule by warmup + constant (ZENITH is
its own schedule). Run it with tools/train_d2.py (it adds ZENITH's metrics and the
wall-clock budget) or detectron2's tools/lazyconfig_train_net.py:

    python tools/train_d2.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_zenith_24h.py --num-gpus 8
"""
from fvcore.common.param_scheduler import LinearParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params

from zenith_det.solver import Zenith

_base = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
model = _base.model
dataloader = _base.dataloader
train = _base.train
train.max_iter = 270000  # an upper bound: the wall-clock budget below normally ends the run
train.eval_period = 20000
train.output_dir = "./output/d2_mask_rcnn_zenith_lazy"
# Read by tools/train_d2.py (detectron2's lazyconfig_train_net ignores them):
train.max_time_hours = 24.0  # wall-clock budget, 0 = none
train.zenith_log_period = 20  # ZENITH's multiplier and grad norm into metrics.json

optimizer = L(Zenith)(
    # params.model is set to the model before instantiation, as for detectron2's SGD.
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
    window=500,
)

# Warmup as in detectron2's schedules (1000 iterations; set warmup_length again if
# you change train.max_iter), then a constant base lr. ZENITH multiplies its
# norm-history factor on top of whatever this writes into group["lr"].
# (Linear from 1 to 1 is the constant: fvcore's ConstantParamScheduler rejects
# where=1.0, which detectron2's LRMultiplier reaches after the last iteration.)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(LinearParamScheduler)(start_value=1.0, end_value=1.0),
    warmup_length=1000 / train.max_iter,
    warmup_factor=0.001,
)

