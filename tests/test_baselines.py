"""The comparison baselines in OPTIMIZER_REGISTRY: each trains in our trainer; the special
calls (ALI-G's closure, schedule-free's train()/eval()) happen; a missing package says what to install."""
import importlib
import importlib.metadata
import json
import math
import os
import sys
import types

import pytest
import torch

from zenith_det.engine import Trainer, default_setup
from zenith_det.engine.train_loop import SimpleTrainer
from zenith_det.errors import UserError
from zenith_det.solver import OPTIMIZER_REGISTRY, build_lr_scheduler, effective_lr
from zenith_det.solver import baselines

# key -> (module to importorskip, BASE_LR the comparison uses)
BASELINES = {
    "DADAPT_SGD": ("pytorch_optimizer", 1.0),
    "PRODIGY": ("pytorch_optimizer", 1.0),
    "ALIG": ("pytorch_optimizer", 0.1),
    "SCHEDULEFREE_SGD": ("schedulefree", 0.2),
    "SCHEDULEFREE_SGD_PO": ("pytorch_optimizer", 0.2),
    "DOG": ("dog", 1.0),
    "LDOG": ("dog", 1.0),
    "DOWG": ("dowgopt", 0.02),
    "COCOB": ("parameterfree", 0.02),
}


def _need(module):
    if module == "dowgopt":
        try:
            importlib.metadata.distribution("dowgopt")
        except importlib.metadata.PackageNotFoundError:
            pytest.skip("dowgopt is not installed")
    else:
        pytest.importorskip(module)


def _cfg(tiny_cfg, key, base_lr, **extra):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.OPTIMIZER = key
    cfg.SOLVER.BASE_LR = base_lr
    cfg.SOLVER.LR_SCHEDULER_NAME = ""
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    cfg.DETERMINISTIC = False
    for k, v in extra.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def _train(cfg, resume=False):
    default_setup(cfg, resume=resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_every_optimizer_in_the_registry_is_covered():
    listed = set(BASELINES) | {"SGD", "ZENITH", "ADAMW", "ADAMW_ZENITH"}
    assert {k for k, _ in OPTIMIZER_REGISTRY} == listed


@pytest.mark.parametrize("key", sorted(BASELINES))
def test_baseline_trains_in_our_trainer(tiny_cfg, key):
    module, base_lr = BASELINES[key]
    _need(module)
    cfg = _cfg(tiny_cfg, key, base_lr)
    trainer = _train(cfg)
    assert trainer.iter == 4 and trainer.stop_reason is None
    for name, value in trainer.model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    records = [json.loads(line) for line in open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))]
    # every optimizer gets the global gradient norm at the log period
    norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert norms and all(n > 0 and math.isfinite(n) for n in norms)
    assert open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")).read() == "model_final.pth"
    lr = effective_lr(trainer.optimizer)
    if key == "COCOB":
        assert lr is None
    else:
        assert lr is not None and lr > 0 and math.isfinite(lr)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_automatic_methods_default_to_a_constant_schedule(tiny_cfg):
    pytest.importorskip("pytorch_optimizer")
    cfg = _cfg(tiny_cfg, "DADAPT_SGD", 1.0)
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.WARMUP_ITERS = 10
    model = torch.nn.Linear(2, 2)
    opt = OPTIMIZER_REGISTRY.get("DADAPT_SGD")(cfg, [{"params": list(model.parameters()), "lr": 1.0, "weight_decay": 0.0}])
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] < 1.0 and lrs[10:] == [1.0] * 90
    for key in BASELINES:
        assert baselines.DEFAULT_LR_SCHEDULER[key] == "WarmupConstantLR"


def test_alig_gets_the_loss_through_a_closure_and_its_cap_follows_the_schedule():
    pytest.importorskip("pytorch_optimizer")
    from zenith_det.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.5
    model = torch.nn.Linear(3, 1)
    opt = OPTIMIZER_REGISTRY.get("ALIG")(cfg, [{"params": list(model.parameters()), "lr": 0.5, "weight_decay": 0.0}])
    assert opt.needs_loss_closure
    with pytest.raises(Exception, match="closure"):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3  # e.g. during warmup
    opt.step(lambda: 100.0)  # a Polyak step far above the cap
    assert opt.param_groups[0]["step_size"] == pytest.approx(1e-3)


def test_schedulefree_evaluates_and_saves_the_averaged_weights_and_resumes(tiny_cfg, monkeypatch):
    pytest.importorskip("schedulefree")
    import zenith_det.engine.defaults as defaults

    seen, trainers = [], []

    def fake_evaluate(cfg, model):
        seen.append(trainers[-1].optimizer.param_groups[0]["train_mode"])
        return {"bbox": {"AP": 1.0}}

    monkeypatch.setattr(defaults, "evaluate", fake_evaluate)
    cfg = _cfg(tiny_cfg, "SCHEDULEFREE_SGD", 0.2)
    cfg.DATASETS.TEST = ("synthetic_shapes_val",)
    cfg.TEST.EVAL_PERIOD = 2
    default_setup(cfg, resume=False)
    trainers.append(Trainer(cfg))
    trainer = trainers[-1]
    trainer.resume_or_load(resume=False)
    trainer.train()
    # evaluations after iteration 2 and at the end, both at the averaged weights x
    assert seen == [False, False]
    opt = trainer.optimizer
    assert opt.param_groups[0]["train_mode"] is False
    saved = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(saved["model"][name], value), name
    assert saved["optimizer"]["param_groups"][0]["train_mode"] is False
    # train() moves the model to the training point y, eval() back to x
    p = next(q for q in trainer.model.parameters() if q in opt.state and "z" in opt.state[q])
    x = p.detach().clone()
    opt.train()
    assert not torch.equal(p.detach(), x)
    opt.eval()
    assert torch.allclose(p.detach(), x, atol=1e-6)

    # --resume from the eval-mode checkpoint: training continues (train() before each step)
    cfg2 = cfg.clone()
    cfg2.SOLVER.MAX_ITER = 6
    cfg2.TEST.EVAL_PERIOD = 0
    default_setup(cfg2, resume=True)
    trainers.append(Trainer(cfg2))
    resumed = trainers[-1]
    resumed.resume_or_load(resume=True)
    resumed.train()
    assert resumed.start_iter == 4 and resumed.iter == 6
    assert resumed.optimizer.param_groups[0]["k"] == 6
    assert seen == [False, False, False]


def test_loss_closure_is_refused_with_float16_grad_scaling():
    model = torch.nn.Linear(2, 1)

    class NeedsLoss(torch.optim.SGD):
        needs_loss_closure = True

    with pytest.raises(UserError, match="SOLVER.AMP"):
        SimpleTrainer(model, None, NeedsLoss(model.parameters(), lr=0.1), amp_dtype=torch.float16)


@pytest.mark.parametrize(
    "key,module,package",
    [("DADAPT_SGD", "pytorch_optimizer", "pytorch-optimizer"), ("SCHEDULEFREE_SGD", "schedulefree", "schedulefree"),
     ("DOG", "dog", "dog-optimizer"), ("COCOB", "parameterfree", "parameterfree")],
)
def test_missing_package_names_the_key_and_the_extra(monkeypatch, key, module, package):
    from zenith_det.config import get_cfg

    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(UserError) as err:
        OPTIMIZER_REGISTRY.get(key)(get_cfg(), [{"params": [torch.nn.Parameter(torch.ones(1))]}])
    msg = str(err.value)
    assert f"SOLVER.OPTIMIZER {key}" in msg and f"pip install {package}" in msg and '".[baselines]"' in msg


def test_dowg_missing_and_import_name_clash(monkeypatch):
    from zenith_det.config import get_cfg

    params = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 1.0, "weight_decay": 0.0}]
    try:
        importlib.metadata.distribution("dowgopt")
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    if installed:
        # an unrelated module that owns the name `dowg` must not be picked up
        monkeypatch.setitem(sys.modules, "dowg", types.ModuleType("dowg"))
        opt = OPTIMIZER_REGISTRY.get("DOWG")(get_cfg(), params)
        assert type(opt).__name__ == "DoWG" and isinstance(opt, torch.optim.Optimizer)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UserError, match=r"SOLVER.OPTIMIZER DOWG .*pip install dowgopt"):
        OPTIMIZER_REGISTRY.get("DOWG")(get_cfg(), params)
