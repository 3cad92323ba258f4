"""Every OPTIMIZER_REGISTRY entry through its OptimizerSpec: each builds and trains; what the spec
says holds (ALI-G's closure, schedule-free's train()/eval(), default schedule, effective lr); the
baselines train in our Trainer; a missing package says what to install; a plain function still registers."""
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
from zenith_det.config import get_cfg
from zenith_det.solver import (
    OPTIMIZER_REGISTRY,
    OptimizerSpec,
    build_lr_scheduler,
    build_optimizer,
    lr_schedule_name,
    list_optimizers,
    optimizer_spec,
    register_optimizer,
)

BUILTIN = ("SGD", "ZENITH", "ADAMW", "ADAMW_ZENITH")
BASELINES = ("DADAPT_SGD", "PRODIGY", "ALIG", "SCHEDULEFREE_SGD", "SCHEDULEFREE_SGD_PO", "DOG", "LDOG", "DOWG", "COCOB")
CONFIG_BASE_LR = 0.02  # the synthetic configs' (and get_cfg's) BASE_LR
COMPARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "compare")


def _compare_configs():
    from zenith_det.config import load_config

    return {name: load_config(os.path.join(COMPARE, name)) for name in sorted(os.listdir(COMPARE))
            if name.endswith(".yaml") and not name.startswith("Base")}


def _raced_lr(key):
    """The BASE_LR configs/compare/ races `key` at (its authors' setting), else the configs' 0.02."""
    return next((cfg.SOLVER.BASE_LR for cfg in _compare_configs().values() if cfg.SOLVER.OPTIMIZER == key),
                CONFIG_BASE_LR)


def _need(key):
    """Skip where the spec's package is not installed."""
    try:
        optimizer_spec(key).require()
    except UserError as e:
        pytest.skip(str(e))


class ToyDetector(torch.nn.Module):
    """The detectors' interface, (images, targets) -> dict of losses, on conv + BatchNorm + linear."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, images, targets):
        feat = self.bn(self.conv(torch.stack(images))).relu().mean((2, 3))
        pred = self.head(feat).squeeze(1)
        return {"loss_toy": ((pred - torch.stack([t["y"] for t in targets])) ** 2).mean()}


def toy_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield [torch.randn(3, 8, 8, generator=g) for _ in range(2)], [{"y": torch.randn((), generator=g)} for _ in range(2)]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test are gone after it."""
    monkeypatch.setattr(OPTIMIZER_REGISTRY, "_obj_map", dict(OPTIMIZER_REGISTRY._obj_map))
    return OPTIMIZER_REGISTRY


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
    assert {k for k, _ in OPTIMIZER_REGISTRY} == set(BUILTIN) | set(BASELINES)
    for key, spec in OPTIMIZER_REGISTRY:
        assert isinstance(spec, OptimizerSpec) and spec.name == key and spec.description
        assert optimizer_spec(key.lower()) is spec


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(k for k, _ in OPTIMIZER_REGISTRY))
def test_each_spec_builds_trains_and_reads_its_step_size(key):
    """Spec-driven: every registered optimizer, at the BASE_LR it is raced at, trains 3 steps in
    SimpleTrainer given its spec; the spec's facts match what the trainer does."""
    spec = optimizer_spec(key)
    _need(key)
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = key
    cfg.SOLVER.BASE_LR = _raced_lr(key)
    cfg.SOLVER.ZENITH.WINDOW = 2
    model = ToyDetector()
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Optimizer)
    assert spec.lr_schedule == lr_schedule_name(cfg)
    assert spec.has_eval_weights == (callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None)))
    closures = []
    # a step pre-hook sees step's arguments (torch passes the optimizer itself among them)
    opt.register_step_pre_hook(lambda o, args, kwargs: closures.append(
        any(callable(a) and a is not o for a in args) or kwargs.get("closure") is not None))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SimpleTrainer(model, toy_batches(3), opt, spec=spec)
    assert trainer.optimizer_spec is spec
    trainer.train(0, 3)
    assert trainer.iter == 3 and closures == [spec.needs_loss_closure] * 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    lr = spec.effective_lr(opt)
    if spec.read_effective_lr is None:  # documented: no single step size (COCOB)
        assert lr is None
    else:
        assert lr is not None and lr > 0 and math.isfinite(lr), lr
    if spec.has_eval_weights:
        assert opt.param_groups[0]["train_mode"] is True
        trainer.evaluation_model()
        assert opt.param_groups[0]["train_mode"] is False


@pytest.mark.slow
def test_a_plain_function_registers_as_a_spec_with_the_defaults(scratch_registry):
    @OPTIMIZER_REGISTRY.register()
    def MY_SGD(cfg, params):
        """Plain SGD, registered as the README shows."""
        return torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM)

    assert not isinstance(MY_SGD, OptimizerSpec)  # the decorator hands the function back
    spec = optimizer_spec("my_sgd")
    assert spec.name == "MY_SGD" and spec.builder is MY_SGD and spec.description == "Plain SGD, registered as the README shows."
    assert (spec.lr_schedule, spec.needs_loss_closure, spec.has_eval_weights, spec.has_lr) == (
        "WarmupMultiStepLR", False, False, True)
    assert spec.package is None
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "MY_SGD"
    model = ToyDetector()
    opt = build_optimizer(cfg, model)
    assert type(opt) is torch.optim.SGD
    assert type(OPTIMIZER_REGISTRY.get("MY_SGD")(cfg, list(torch.nn.Linear(1, 1).parameters()))) is torch.optim.SGD
    trainer = SimpleTrainer(model, toy_batches(2), opt)  # a plain optimizer, no spec: plain step()
    assert not trainer.optimizer_spec.needs_loss_closure and not trainer.optimizer_spec.has_eval_weights
    trainer.train(0, 2)
    assert spec.effective_lr(opt) == pytest.approx(cfg.SOLVER.BASE_LR)
    with pytest.raises(AssertionError, match="already registered"):
        OPTIMIZER_REGISTRY.register()(MY_SGD)


def test_a_spec_registers_with_its_facts(scratch_registry):
    def builder(cfg, params):
        return torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR)

    OPTIMIZER_REGISTRY.register(OptimizerSpec("MY_CONST_SGD", builder, "Constant SGD", lr_schedule="WarmupConstantLR"))

    @register_optimizer(package="surely-not-installed-zd", module="surely_not_installed_zd", extra="baselines")
    def MY_MISSING(cfg, params):
        """Needs a package."""
        raise AssertionError("not reached: the package check comes first")

    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "my_const_sgd"
    assert lr_schedule_name(cfg) == "WarmupConstantLR"
    assert ("MY_CONST_SGD", "Constant SGD") in list_optimizers(with_description=True)
    assert isinstance(build_optimizer(cfg, torch.nn.Linear(2, 1)), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "MY_MISSING"
    with pytest.raises(UserError, match=r"SOLVER.OPTIMIZER MY_MISSING needs the package 'surely-not-installed-zd'.*"
                                        r"pip install surely-not-installed-zd"):
        build_optimizer(cfg, torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="lr_schedule"):
        OptimizerSpec("BAD", builder, lr_schedule="WarmupLinearLR")


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(BASELINES))
def test_baseline_trains_in_our_trainer(tiny_cfg, key):
    _need(key)
    spec = optimizer_spec(key)
    cfg = _cfg(tiny_cfg, key, _raced_lr(key))
    trainer = _train(cfg)
    assert trainer.optimizer_spec is spec  # Trainer looks it up from SOLVER.OPTIMIZER
    assert trainer.iter == 4 and trainer.stop_reason is None
    for name, value in trainer.model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    records = [json.loads(line) for line in open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))]
    # every optimizer gets the global gradient norm at the log period
    norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert norms and all(n > 0 and math.isfinite(n) for n in norms)
    assert open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")).read() == "model_final.pth"
    lr = spec.effective_lr(trainer.optimizer)
    if spec.read_effective_lr is None:
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
        assert optimizer_spec(key).lr_schedule == "WarmupConstantLR"


def test_alig_gets_the_loss_through_a_closure_and_its_cap_follows_the_schedule():
    pytest.importorskip("pytorch_optimizer")
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.5
    model = torch.nn.Linear(3, 1)
    opt = OPTIMIZER_REGISTRY.get("ALIG")(cfg, [{"params": list(model.parameters()), "lr": 0.5, "weight_decay": 0.0}])
    assert optimizer_spec("ALIG").needs_loss_closure
    with pytest.raises(Exception, match="closure"):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3  # e.g. during warmup
    opt.step(lambda: 100.0)  # a Polyak step far above the cap
    assert opt.param_groups[0]["step_size"] == pytest.approx(1e-3)


@pytest.mark.slow
def test_schedulefree_evaluates_and_saves_the_averaged_weights_and_resumes(tiny_cfg, monkeypatch):
    pytest.importorskip("schedulefree")
    import zenith_det.engine.defaults as defaults

    seen, trainers = [], []

    def fake_test(cls, cfg, model):
        seen.append(trainers[-1].optimizer.param_groups[0]["train_mode"])
        return {"bbox": {"AP": 1.0}}

    monkeypatch.setattr(defaults.Trainer, "test", classmethod(fake_test))
    cfg = _cfg(tiny_cfg, "SCHEDULEFREE_SGD", 0.2, **{"TEST.PRECISE_BN.NUM_ITER": 2})
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

    spec = OptimizerSpec("NEEDS_LOSS", lambda cfg, params: torch.optim.SGD(params, lr=0.1), needs_loss_closure=True)
    with pytest.raises(UserError, match="SOLVER.OPTIMIZER NEEDS_LOSS .*SOLVER.AMP"):
        SimpleTrainer(model, None, torch.optim.SGD(model.parameters(), lr=0.1), amp_dtype=torch.float16, spec=spec)


@pytest.mark.parametrize(
    "key,module,package",
    [("DADAPT_SGD", "pytorch_optimizer", "pytorch-optimizer"), ("SCHEDULEFREE_SGD", "schedulefree", "schedulefree"),
     ("DOG", "dog", "dog-optimizer"), ("COCOB", "parameterfree", "parameterfree")],
)
def test_missing_package_names_the_key_and_the_extra(monkeypatch, key, module, package):
    assert (optimizer_spec(key).package, optimizer_spec(key).module) == (package, module)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(UserError) as err:
        OPTIMIZER_REGISTRY.get(key)(get_cfg(), [{"params": [torch.nn.Parameter(torch.ones(1))]}])
    msg = str(err.value)
    assert f"SOLVER.OPTIMIZER {key}" in msg and f"pip install {package}" in msg and '".[baselines]"' in msg


def test_dowg_missing_and_import_name_clash(monkeypatch):
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


def test_race_arms_use_the_specs_schedules():
    """configs/compare/<arm>.yaml runs each method with its spec's schedule (cosine variants aside)."""
    checked = 0
    for name, cfg in _compare_configs().items():
        if cfg.SOLVER.OPTIMIZER not in BASELINES:
            continue
        expected = "WarmupCosineLR" if name.endswith("_cosine.yaml") else optimizer_spec(cfg.SOLVER.OPTIMIZER).lr_schedule
        assert cfg.SOLVER.LR_SCHEDULER_NAME == expected, name
        checked += 1
    assert checked >= 10


@pytest.mark.slow
def test_dog_is_evaluated_at_its_iterate_average_and_resumes_it_exactly(tiny_cfg):
    """DoG's authors evaluate the polynomial-decay average of the iterates: the trainer keeps
    the package's averager, evaluates its model, and a resumed run ends at the same average."""
    pytest.importorskip("dog")
    # a warmup inside the shortest run, so the 2-iteration run's schedule is the full run's
    cfg = _cfg(tiny_cfg, "DOG", 1.0, **{"SOLVER.CHECKPOINT_PERIOD": 2, "SOLVER.WARMUP_ITERS": 1, "DETERMINISTIC": True,
                                        "TEST.PRECISE_BN.NUM_ITER": 2})
    full = _train(cfg)
    averaged = full.evaluation_model()
    assert averaged is full.averager.averaged_model and averaged is not full.model
    assert full.averager.t == 5  # one averaging step per update (t starts at 1)
    diffs = [not torch.equal(a, b) for a, b in zip(averaged.parameters(), full.model.parameters())]
    assert any(diffs)
    final = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)
    assert final["averager"]["t"] == 5
    from zenith_det.engine import build_model_for_evaluation

    evaluated, _ = build_model_for_evaluation(cfg, resume=True)  # --eval-only --resume
    for a, b in zip(evaluated.state_dict().values(), averaged.state_dict().values()):
        assert torch.equal(a, b)

    cfg2 = cfg.clone()
    cfg2.OUTPUT_DIR = cfg.OUTPUT_DIR + "_interrupted"
    cfg2.SOLVER.MAX_ITER = 2
    _train(cfg2)
    cfg3 = cfg2.clone()
    cfg3.SOLVER.MAX_ITER = 4
    resumed = _train(cfg3, resume=True)
    assert resumed.start_iter == 2
    for a, b in zip(resumed.evaluation_model().state_dict().values(), averaged.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_schedulefree_bn_statistics_are_recomputed_at_the_averaged_weights(tiny_cfg):
    """Before an evaluation, schedule-free's BatchNorm statistics are recomputed at x over
    TEST.PRECISE_BN.NUM_ITER training batches: the same batches each time (so the result is
    a function of the weights), with the global RNG and the training stream untouched."""
    pytest.importorskip("schedulefree")
    cfg = _cfg(tiny_cfg, "SCHEDULEFREE_SGD", 0.2, **{"TEST.PRECISE_BN.NUM_ITER": 3})
    trainer = _train(cfg)
    bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # the final checkpoint holds what is evaluated: x with statistics recomputed there
    final = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)["model"]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(final[name], value), name
    from zenith_det.engine.precise_bn import recompute_bn_stats
    from zenith_det.data import build_detection_train_loader

    recomputed, count = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    model = trainer.evaluation_model()  # at the same iteration: the statistics already belong to x
    assert model is trainer.model and torch.equal(bn.running_mean, recomputed)
    assert trainer.optimizer.param_groups[0]["train_mode"] is False  # at x
    bn.running_mean.zero_()
    rng = torch.get_rng_state()
    recompute_bn_stats(trainer.model, build_detection_train_loader(cfg, start_iter=0), 3)
    assert torch.equal(bn.running_mean, recomputed)  # the same batches, the same result
    assert torch.equal(bn.num_batches_tracked, count) and torch.equal(torch.get_rng_state(), rng)
    trainer.optimizer.train()  # at y the statistics would differ
    bn.running_mean.zero_()
    recompute_bn_stats(trainer.model, build_detection_train_loader(cfg), 3)
    assert not torch.equal(bn.running_mean, recomputed)
    # An optimizer that trains and evaluates the same weights keeps its running statistics ...
    sgd = _train(_cfg(tiny_cfg, "SGD", 0.02, **{"OUTPUT_DIR": cfg.OUTPUT_DIR + "_sgd"}))
    bn = next(m for m in sgd.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    kept = bn.running_mean.clone()
    sgd.evaluation_model()
    assert torch.equal(bn.running_mean, kept)
