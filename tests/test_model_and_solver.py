"""Model builder and solver as the config drives them."""
import math
from types import SimpleNamespace

import pytest
import torch

from zenith_det import Zenith
from zenith_det.config import get_cfg, load_config
from zenith_det.errors import UserError
from zenith_det.modeling import build_model
from zenith_det.solver import (
    OPTIMIZER_REGISTRY,
    OptimizerSpec,
    build_lr_scheduler,
    build_optimizer,
    lookup_optimizer,
    lr_schedule_name,
    optimizer_spec,
)

META = SimpleNamespace(num_classes=3, num_keypoints=5)


def small_cfg(**overrides):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "tiny_fpn"
    cfg.MODEL.BACKBONE.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (16, 16)
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


@pytest.mark.parametrize("arch, head", [("MaskRCNN", "mask_predictor"), ("KeypointRCNN", "keypoint_predictor"), ("FasterRCNN", None)])
def test_build_model_sizes_heads_from_metadata(arch, head):
    model = build_model(small_cfg(**{"MODEL.META_ARCHITECTURE": arch}), META)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    if head == "mask_predictor":
        assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    elif head == "keypoint_predictor":
        assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 5
    else:
        assert not model.roi_heads.has_mask() and not model.roi_heads.has_keypoint()


def test_train_and_test_sizes_follow_the_config():
    cfg = small_cfg(**{"INPUT.MIN_SIZE_TRAIN": "(64, 80)", "INPUT.MIN_SIZE_TEST": "96"})
    model = build_model(cfg, META)
    assert model.transform.min_size == (64, 80)
    model.eval()
    assert model.transform.min_size == (96,)


def test_model_weights_accepts_state_dicts_and_checkpoints(tmp_path):
    cfg = small_cfg()
    model = build_model(cfg, META)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    torch.save({"model": model.state_dict(), "iteration": 5}, tmp_path / "ours.pth")
    for name in ("plain.pth", "ours.pth"):
        cfg.MODEL.WEIGHTS = str(tmp_path / name)
        loaded = build_model(cfg, META)
        for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), (name, k)


def test_missing_or_broken_weights_are_one_line_errors(tmp_path):
    cfg = small_cfg(**{"MODEL.WEIGHTS": str(tmp_path / "nope.pth")})
    with pytest.raises(UserError, match="MODEL.WEIGHTS.*nope.pth does not exist"):
        build_model(cfg, META)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    cfg.MODEL.WEIGHTS = str(tmp_path / "bad.pth")
    with pytest.raises(UserError, match="is damaged or not a torch file"):
        build_model(cfg, META)


def test_param_groups_follow_detectron2_rules():
    cfg = small_cfg(**{"SOLVER.OPTIMIZER": "ZENITH", "SOLVER.BASE_LR": "0.1", "SOLVER.WEIGHT_DECAY": "1e-4",
                       "SOLVER.WEIGHT_DECAY_NORM": "0.0", "SOLVER.BIAS_LR_FACTOR": "2.0"})
    model = build_model(cfg, META)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, Zenith)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            group = by_param[id(p)]
            if isinstance(module, torch.nn.BatchNorm2d):
                assert group["weight_decay"] == 0.0
            elif name == "bias":
                assert group["lr"] == pytest.approx(0.2) and group["weight_decay"] == 1e-4
            else:
                assert group["lr"] == pytest.approx(0.1) and group["weight_decay"] == 1e-4
    assert len(opt.param_groups) <= 3


def test_registry_and_unknown_optimizer():
    assert {"SGD", "ZENITH", "ADAMW"} <= {k for k, _ in OPTIMIZER_REGISTRY}
    assert all(isinstance(spec, OptimizerSpec) for _, spec in OPTIMIZER_REGISTRY)
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(small_cfg(**{"SOLVER.OPTIMIZER": "SGD"}), model).defaults["fused"] is True
    # one lookup, by key (any case) or config; lookup_optimizer is the same
    cfg = small_cfg(**{"SOLVER.OPTIMIZER": "zenith"})
    assert optimizer_spec(cfg) is optimizer_spec("ZENITH") is lookup_optimizer(cfg) is OPTIMIZER_REGISTRY.get("ZENITH")
    assert isinstance(optimizer_spec("zenith")(cfg, list(model.parameters())), Zenith)  # a spec builds when called
    with pytest.raises(UserError, match="SOLVER.OPTIMIZER.*ZENTIH"):
        build_optimizer(small_cfg(**{"SOLVER.OPTIMIZER": "ZENTIH"}), model)
    with pytest.raises(UserError, match="SOLVER.OPTIMIZER.*ZENTIH.*choose one of .*ZENITH"):
        optimizer_spec("ZENTIH")


def test_builtin_specs():
    """What the built-in entries' specs say: ZENITH is its own schedule, SGD/AdamW decay by steps;
    none needs a closure or has eval weights; ZENITH's step size is lr x multiplier."""
    assert optimizer_spec("ZENITH").lr_schedule == "WarmupConstantLR"
    assert optimizer_spec("SGD").lr_schedule == optimizer_spec("ADAMW").lr_schedule == "WarmupMultiStepLR"
    for key in ("SGD", "ZENITH", "ADAMW", "ADAMW_ZENITH"):
        spec = optimizer_spec(key)
        assert not spec.needs_loss_closure and not spec.has_eval_weights and spec.has_lr and spec.package is None
    assert lr_schedule_name(small_cfg(**{"SOLVER.OPTIMIZER": "ZENITH", "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR"})) == "WarmupCosineLR"
    cfg = small_cfg(**{"SOLVER.OPTIMIZER": "ZENITH", "SOLVER.BASE_LR": "0.1"})
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    assert optimizer_spec("ZENITH").effective_lr(opt) == pytest.approx(0.1 * float(opt.multiplier()))
    assert optimizer_spec("SGD").effective_lr(opt) == pytest.approx(0.1)


def _lrs(cfg, n):
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_with_warmup():
    base = {"SOLVER.BASE_LR": "1.0", "SOLVER.MAX_ITER": "100", "SOLVER.WARMUP_ITERS": "10", "SOLVER.WARMUP_FACTOR": "0.1"}
    zen = _lrs(small_cfg(**base, **{"SOLVER.OPTIMIZER": "ZENITH"}), 100)  # default: constant for ZENITH
    assert zen[0] == pytest.approx(0.1) and zen[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(lr == pytest.approx(1.0) for lr in zen[10:])
    step = _lrs(small_cfg(**base, **{"SOLVER.OPTIMIZER": "SGD", "SOLVER.STEPS": "(50, 80)"}), 100)
    assert step[49] == pytest.approx(1.0) and step[50] == pytest.approx(0.1) and step[80] == pytest.approx(0.01)
    cos = _lrs(small_cfg(**base, **{"SOLVER.OPTIMIZER": "SGD", "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR"}), 100)
    assert cos[50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos[99] < 0.01


@pytest.mark.parametrize("schedule", ["WarmupMultiStepLR", "WarmupCosineLR", "WarmupConstantLR"])
def test_a_warmup_as_long_as_the_run_is_a_schedule_too(schedule):
    """fvcore's schedulers take positions in [0, 1): a warmup reaching the run's end must not ask for 1."""
    cfg = small_cfg(**{"SOLVER.BASE_LR": "1.0", "SOLVER.MAX_ITER": "2", "SOLVER.WARMUP_ITERS": "5",
                       "SOLVER.OPTIMIZER": "SGD", "SOLVER.LR_SCHEDULER_NAME": schedule})
    lrs = _lrs(cfg, 3)
    assert lrs[0] == pytest.approx(0.001) and all(0 <= lr <= 1 for lr in lrs)


def test_config_inheritance_and_errors(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 7\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 9\n")
    cfg = load_config(str(child), ["SOLVER.WARMUP_ITERS", "3"])
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS) == (0.5, 9, 3)
    typo = tmp_path / "typo.yaml"
    typo.write_text("SOLVER:\n  BASE_LRR: 0.5\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown config key SOLVER.BASE_LRR"):
        load_config(str(typo))
    with pytest.raises(UserError, match="SOLVER.MAX_ITER"):
        load_config("", ["SOLVER.MAX_ITER", "many"])
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    # Whole numbers are fine for float keys, in files and on the command line.
    hours = tmp_path / "hours.yaml"
    hours.write_text("SOLVER:\n  MAX_TIME_HOURS: 2\n")
    assert load_config(str(hours)).SOLVER.MAX_TIME_HOURS == 2.0
    assert load_config("", ["SOLVER.BASE_LR", "1"]).SOLVER.BASE_LR == 1.0


def test_train_net_lists_the_optimizers_with_their_descriptions(capsys):
    from conftest import load_tool
    from zenith_det.solver import list_optimizers

    assert load_tool("train_net").cli(["--list-optimizers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_optimizers()
    assert any(line.startswith("ZENITH ") and "history" in line for line in lines)
