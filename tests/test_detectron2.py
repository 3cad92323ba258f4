"""The detectron2 integration, checked against a real detectron2 (installed from its source).

Skipped as a whole where detectron2 is absent (it is not on PyPI; see docs/detectron2.md, 'Installing detectron2').
"""
import pytest

pytest.importorskip("detectron2")

pytestmark = pytest.mark.detectron2

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks  # noqa: E402
from detectron2.solver import build_lr_scheduler  # noqa: E402

import zenith_det.detectron2 as zd2  # noqa: E402
from zenith_det.detectron2 import solver as zd2_solver  # noqa: E402
from zenith_det.errors import UserError  # noqa: E402
from zenith_det.solver import Zenith, norm_history  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "detectron2")
SYNTHETIC = os.path.join(CONFIGS, "synthetic", "mask_rcnn_R_18_FPN_zenith_500iter.yaml")


# ---------------------------------------------------------------- helpers


class Toy(torch.nn.Module):
    """Conv + BN + Linear: weights, biases and a norm layer, as detectron2's rules distinguish."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = self.head(self.norm(self.conv(x)).mean((2, 3)))
        return {"loss": ((y - 1.0) ** 2).mean()}


def toy_batches():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(2, 3, 8, 8, generator=g)


def d2_cfg(*opts):
    cfg = get_cfg()
    zd2.add_zenith_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def hyper(optimizer):
    """{param: (lr, weight_decay)} as the optimizer will apply them."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[p] = (group["lr"], group["weight_decay"])
    return out


@pytest.fixture
def registered():
    zd2.register()
    yield
    zd2.unregister()


# ---------------------------------------------------------------- config, optimizer


def test_add_zenith_config_adds_keys_and_keeps_existing_ones():
    cfg = get_cfg()
    cfg.SOLVER.NEW_ALLOWED_PROBE = 1  # a key someone else added stays
    cfg.SOLVER.BETAS = (0.8, 0.9)  # as does a value already there
    cfg.freeze()
    zd2.add_zenith_config(cfg)
    assert cfg.is_frozen()
    assert cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.SOLVER.ZENITH.WINDOW == 500
    assert cfg.SOLVER.ZENITH.START == norm_history.DEFAULT_START  # as our own configs and Zenith
    assert cfg.SOLVER.MAX_TIME_HOURS == 0.0
    assert cfg.DATASETS.REGISTER == []
    assert cfg.SOLVER.BETAS == (0.8, 0.9) and cfg.SOLVER.EPS == 1e-8
    assert cfg.SOLVER.NEW_ALLOWED_PROBE == 1
    cfg.defrost()
    cfg.SOLVER.ZENITH.WINDOW = 7
    zd2.add_zenith_config(cfg)
    assert cfg.SOLVER.ZENITH.WINDOW == 7


def test_registered_default_trainer_builds_zenith_and_still_sgd(registered):
    model = Toy()
    opt = DefaultTrainer.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", "ZENITH", "SOLVER.ZENITH.WINDOW", "7"), model)
    assert isinstance(opt, Zenith) and opt.window == 7
    import detectron2.solver

    assert isinstance(detectron2.solver.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", "ZENITH"), model), Zenith)

    sgd = DefaultTrainer.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", "SGD"), model)
    assert type(sgd) is torch.optim.SGD
    reference = zd2_solver._D2_BUILD_OPTIMIZER(d2_cfg(), model)  # detectron2's own builder
    assert sgd.defaults == reference.defaults
    assert [{k: v for k, v in g.items() if k != "params"} for g in sgd.param_groups] == \
           [{k: v for k, v in g.items() if k != "params"} for g in reference.param_groups]
    # A config never given our keys is SGD, as in plain detectron2.
    assert type(DefaultTrainer.build_optimizer(get_cfg(), model)) is torch.optim.SGD


def test_register_is_idempotent_and_undone_by_unregister():
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.build_optimizer
    zd2.register()
    zd2.register()
    try:
        assert zd2.is_registered()
    finally:
        zd2.unregister()
    assert not zd2.is_registered() and d2_defaults.build_optimizer is original
    cfg = d2_cfg("SOLVER.OPTIMIZER", "ZENITH")
    assert type(DefaultTrainer.build_optimizer(cfg, Toy())) is torch.optim.SGD  # plain detectron2 again
    assert isinstance(zd2.ZenithTrainer.build_optimizer(cfg, Toy()), Zenith)  # needs no register()


def test_param_groups_follow_detectron2_rules():
    model = Toy()
    opts = ["SOLVER.BASE_LR", "0.04", "SOLVER.WEIGHT_DECAY", "0.001", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
            "SOLVER.BIAS_LR_FACTOR", "2.0", "SOLVER.WEIGHT_DECAY_BIAS", "0.0005"]
    zenith = zd2.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", "ZENITH", *opts), model)
    sgd = zd2.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", "SGD", *opts), model)
    got, expected = hyper(zenith), {}
    for group in sgd.param_groups:  # SGD's defaults fill what a group leaves out
        for p in group["params"]:
            expected[p] = (group.get("lr", sgd.defaults["lr"]), group.get("weight_decay", sgd.defaults["weight_decay"]))
    assert got == expected
    assert got[model.norm.weight] == (0.04, 0.0)
    assert got[model.head.bias] == (0.08, 0.0005)
    assert got[model.conv.weight] == (0.04, 0.001)


def test_gradient_clipping_wraps_zenith_and_unknown_names_are_user_errors():
    cfg = d2_cfg("SOLVER.OPTIMIZER", "ZENITH", "SOLVER.CLIP_GRADIENTS.ENABLED", "True")
    model = Toy()
    opt = zd2.build_optimizer(cfg, model)
    assert isinstance(opt, Zenith) and type(opt).__name__ == "ZenithWithGradientClip"
    model(next(toy_batches()))["loss"].backward()
    opt.step()
    assert int(opt.state_dict()["zenith_history"]["count"]) == 1
    with pytest.raises(UserError, match="SOLVER.OPTIMIZER"):
        zd2.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", "LION"), model)


@pytest.mark.parametrize("key, need", [("ALIG", "closure"), ("SCHEDULEFREE_SGD", "train\\(\\)/eval\\(\\)"),
                                       ("DOG", "iterate average"), ("LDOG", "iterate average")])
def test_optimizers_detectron2_cannot_drive_are_refused(key, need):
    """detectron2's trainers call step() only: ALI-G would get no loss, schedule-free would
    evaluate and save its training point, DoG would be evaluated at its last iterate. Each is refused
    by its spec, in one line."""
    with pytest.raises(UserError, match=rf"SOLVER.OPTIMIZER {key} needs .*{need}.*tools/train_net.py"):
        zd2.build_optimizer(d2_cfg("SOLVER.OPTIMIZER", key), Toy())


def test_adamw_zenith_history_travels_in_the_optimizer_state():
    cfg = d2_cfg("SOLVER.OPTIMIZER", "ADAMW_ZENITH", "SOLVER.ZENITH.WINDOW", "3")
    model = Toy()
    opt = zd2.build_optimizer(cfg, model)
    for _, batch in zip(range(4), toy_batches()):
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    state = opt.state_dict()
    assert int(state["zenith_history"]["count"]) == 4
    fresh = zd2.build_optimizer(cfg, model)
    fresh.load_state_dict(state)
    assert int(fresh.zenith_scheduler.history.count) == 4
    assert torch.equal(fresh.zenith_scheduler.history.zenith, opt.zenith_scheduler.history.zenith)


# ---------------------------------------------------------------- hooks


def toy_trainer(optimizer_name="ZENITH", **cfg_opts):
    model = Toy()
    opts = ["SOLVER.OPTIMIZER", optimizer_name, "SOLVER.ZENITH.WINDOW", "3", "SOLVER.BASE_LR", "0.01"]
    for k, v in cfg_opts.items():
        opts += [k, v]
    optimizer = zd2.build_optimizer(d2_cfg(*opts), model)
    return SimpleTrainer(model, toy_batches(), optimizer)


@pytest.mark.slow
def test_metrics_hook_puts_multiplier_and_grad_norm_in_event_storage():
    trainer = toy_trainer()
    trainer.register_hooks([zd2.ZenithMetricsHook(period=2)])
    trainer.train(0, 5)
    history = trainer.storage.history("zenith/multiplier")
    assert [it for _, it in history.values()] == [1, 3, 4]  # every 2 iterations and the last
    assert all(0.0 < v <= 1.0 for v, _ in history.values())
    norms = trainer.storage.history("zenith/grad_norm").values()
    assert norms[-1][0] == pytest.approx(float(trainer.optimizer.last_grad_norm()))

    sgd = toy_trainer("SGD")
    sgd.register_hooks([zd2.ZenithMetricsHook(period=1)])
    sgd.train(0, 2)
    assert "zenith/multiplier" not in sgd.storage.histories()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def budget_trainer(tmp_path, clock, max_seconds, step_s=1.0, ckpt_s=2.0, eval_s=3.0):
    """A toy trainer with detectron2's own checkpoint and eval hooks, on a fake clock."""
    trainer = toy_trainer()
    model_forward = trainer.model.forward

    def forward(x):
        clock.now += step_s
        return model_forward(x)

    trainer.model.forward = forward
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path), trainer=trainer)
    save = checkpointer.save

    def slow_save(*args, **kwargs):
        clock.now += ckpt_s
        return save(*args, **kwargs)

    checkpointer.save = slow_save
    evals = []

    def evaluate():
        clock.now += eval_s
        evals.append(trainer.iter)
        return {"bbox": {"AP": 1.0}}

    budget = zd2.WallClockBudget(max_seconds, clock=clock)
    trainer.register_hooks([
        budget,
        hooks.IterationTimer(),
        hooks.PeriodicCheckpointer(checkpointer, period=4),
        hooks.EvalHook(5, evaluate),
    ])
    return trainer, checkpointer, budget, evals


@pytest.mark.slow
def test_budget_ends_training_with_final_checkpoint_and_eval_inside_it(tmp_path):
    clock = FakeClock()
    trainer, checkpointer, budget, evals = budget_trainer(tmp_path, clock, max_seconds=30.0)
    start = clock.now
    assert zd2.train_within_budget(trainer.train, 0, 100) is None
    last = budget.stop_at
    assert last is not None and 5 < last < 100
    assert trainer.iter == trainer.max_iter == last  # as after a normal end of the loop
    assert clock.now - start <= 30.0  # steps, checkpoints, periodic and final evaluations
    assert evals[-1] == last and len(evals) == 1 + (last - 1) // 5  # the final one, after the loop
    final = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=False)
    assert final["iteration"] == last - 1
    spent = final["trainer"]["hooks"]["WallClockBudget"]["spent_seconds"]
    assert 0 < spent <= 30.0

    # Resume: the time spent comes back, and the budget (already spent) allows one more step.
    clock2 = FakeClock()
    resumed, checkpointer2, budget2, _ = budget_trainer(tmp_path, clock2, max_seconds=30.0)
    checkpointer2.resume_or_load("", resume=True)
    assert budget2.spent_before == pytest.approx(spent)
    zd2.train_within_budget(resumed.train, resumed.iter + 1, 100)
    assert budget2.stop_at == last + 1

    # Resume once more with the budget spent: no iteration at all, the evaluation still reports.
    clock3 = FakeClock()
    spent_out, checkpointer3, budget3, evals3 = budget_trainer(tmp_path, clock3, max_seconds=1.0)
    checkpointer3.resume_or_load("", resume=True)
    zd2.train_within_budget(spent_out.train, spent_out.iter + 1, 100)
    assert budget3.stop_at == last + 1 and evals3 == [last + 1]
    assert clock3.now - 1000.0 == 3.0  # the evaluation only: no step, no checkpoint


@pytest.mark.slow
def test_no_budget_trains_to_max_iter(tmp_path):
    clock = FakeClock()
    trainer, _, budget, evals = budget_trainer(tmp_path, clock, max_seconds=0.0)
    trainer.train(0, 7)
    assert trainer.iter == 7 and budget.stop_at is None and evals == [4, 7]
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))


@pytest.mark.slow
def test_zenith_trainer_wires_the_hooks_and_ends_on_the_budget(datasets_root, tmp_path):
    cfg = d2_cfg()
    cfg.merge_from_file(SYNTHETIC)
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.005", "DATALOADER.NUM_WORKERS", "0",
                         "SOLVER.MAX_ITER", "50", "SOLVER.MAX_TIME_HOURS", "1e-4", "OUTPUT_DIR", str(tmp_path)])
    zd2.register_datasets(cfg)
    evaluated = []

    class Trainer(zd2.ZenithTrainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):  # stands in for the (slow) COCO evaluation
            evaluated.append(cfg.DATASETS.TEST)
            return {"bbox": {"AP": 12.5}}

    trainer = Trainer(cfg)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds[0] is zd2.WallClockBudget
    assert kinds.index(zd2.ZenithMetricsHook) < kinds.index(hooks.PeriodicWriter)
    assert isinstance(trainer.optimizer, Zenith)
    trainer.resume_or_load(resume=False)
    # A 0.36 s budget: over after the first iteration or few (the fake-clock tests above check the timing).
    assert trainer.train() == {"bbox": {"AP": 12.5}}
    assert 1 <= trainer.iter == trainer.max_iter < 50 and len(evaluated) == 1  # with the final evaluation
    final = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=False)
    assert final["iteration"] == trainer.iter - 1
    assert final["trainer"]["hooks"]["WallClockBudget"]["spent_seconds"] > 0


# ---------------------------------------------------------------- data, configs


def test_register_datasets_for_detectron2(datasets_root, tmp_path):
    zd2.register_synthetic_datasets()
    shapes = MetadataCatalog.get("synthetic_shapes_val")
    assert shapes.thing_classes == ["ellipse", "triangle", "rectangle", "star"]
    assert shapes.evaluator_type == "coco" and os.path.isfile(shapes.json_file)
    people = MetadataCatalog.get("synthetic_keypoints_train")
    assert len(people.keypoint_names) == 17 and people.thing_classes == ["person"]
    assert ("left_eye", "right_eye") in people.keypoint_flip_map and len(people.keypoint_flip_map) == 8
    dicts = DatasetCatalog.get("synthetic_shapes_val")  # detectron2's loader agrees with our metadata
    assert len(dicts) == 64 and MetadataCatalog.get("synthetic_shapes_val").thing_dataset_id_to_contiguous_id == \
        {2: 0, 5: 1, 9: 2, 13: 3}

    json_file, image_root = shapes.json_file, shapes.image_root
    cfg = d2_cfg("DATASETS.REGISTER", f"[['my_shapes', '{json_file}', '{image_root}']]",
                 "DATASETS.TRAIN", "('my_shapes',)", "DATASETS.TEST", "('synthetic_shapes_val',)")
    zd2.register_datasets(cfg)
    zd2.register_datasets(cfg)  # again: a no-op
    assert MetadataCatalog.get("my_shapes").thing_classes == shapes.thing_classes
    assert len(DatasetCatalog.get("my_shapes")) == 64
    with pytest.raises(UserError, match="already registered"):
        zd2.register_datasets(d2_cfg("DATASETS.REGISTER", f"[['coco_2017_val', '{json_file}', '{image_root}']]"))
    with pytest.raises(UserError, match="malformed"):
        zd2.register_datasets(d2_cfg("DATASETS.REGISTER", "[['only_a_name']]"))


YAML_CONFIGS = sorted(os.path.relpath(p, CONFIGS) for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("name", YAML_CONFIGS)
def test_shipped_yaml_configs_load_with_zenith_and_a_constant_schedule(name):
    cfg = get_cfg()
    zd2.add_zenith_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    assert cfg.SOLVER.OPTIMIZER == "ZENITH"
    if not os.path.basename(name).startswith("Base-"):
        assert cfg.TEST.EVAL_PERIOD > 0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(min(cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS + 2000)):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: a no-op, keeps torch from warning about the order
        sched.step()
    after_warmup = lrs[cfg.SOLVER.WARMUP_ITERS:]
    assert lrs[0] < cfg.SOLVER.BASE_LR and set(after_warmup) == {cfg.SOLVER.BASE_LR}


def test_lazy_config_example_builds_zenith_over_detectron2_groups():
    cfg = LazyConfig.load(os.path.join(CONFIGS, "mask_rcnn_R_50_FPN_zenith_24h.py"))
    model = Toy()
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    assert isinstance(opt, Zenith) and opt.window == 500
    assert hyper(opt)[model.norm.weight] == (0.02, 0.0)  # weight_decay_norm=0.0
    assert hyper(opt)[model.conv.weight] == (0.02, 1e-4)
    multiplier = instantiate(cfg.lr_multiplier)
    assert multiplier(0.0) == pytest.approx(0.001) and multiplier(0.5) == multiplier(1.0) == 1.0
    assert cfg.train.max_time_hours == 24.0 and cfg.train.eval_period > 0


# ---------------------------------------------------------------- the entry point, end to end


def train_d2(args, datasets_root, check=True):
    # One OpenMP thread: on a small shared machine, oversubscribed OpenMP threads
    # slow a step down many times; one thread costs little here.
    env = dict(os.environ, ZENITH_DATASETS=datasets_root, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_d2.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def zenith_history(path):
    return torch.load(path, weights_only=False)["trainer"]["_trainer"]["optimizer"]["zenith_history"]


@pytest.mark.slow
def test_train_d2_trains_logs_checkpoints_resumes_and_evaluates(datasets_root, tmp_path):
    out = str(tmp_path / "run")
    common = [
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.005", "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.CHECKPOINT_PERIOD", "10", "SOLVER.ZENITH.WINDOW", "5", "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_PERIOD", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
        "SEED", "1", "OUTPUT_DIR", out,
    ]
    train_d2(["--config-file", SYNTHETIC, *common, "SOLVER.MAX_ITER", "20"], datasets_root)

    # Trained and logged ZENITH's multiplier into detectron2's metrics.json.
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    logged = [r for r in records if "zenith/multiplier" in r]
    assert logged and logged[-1]["iteration"] == 19
    assert 0.0 < logged[-1]["zenith/multiplier"] <= 1.0 and logged[-1]["zenith/grad_norm"] > 0
    assert all(r["total_loss"] == r["total_loss"] for r in records if "total_loss" in r)  # finite
    # Checkpointed, with ZENITH's window and Z in the optimizer state.
    assert os.path.isfile(os.path.join(out, "model_0000009.pth"))
    first = zenith_history(os.path.join(out, "model_final.pth"))
    assert int(first["window"]) == 5 and int(first["count"]) == 20 and float(first["zenith"]) > 0
    # Evaluated with detectron2's COCOEvaluator: results file and AP in metrics.json.
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        assert len(json.load(f)) > 0
    evals = [r for r in records if "bbox/AP" in r]
    assert evals and "segm/AP" in evals[-1]

    # Resume: the window and Z come back exactly as saved, and the count carries on.
    proc = train_d2(["--config-file", SYNTHETIC, "--resume", *common, "SOLVER.MAX_ITER", "30",
                     "DATASETS.TEST", "()"], datasets_root)
    log = proc.stdout + proc.stderr
    restored = re.search(r"ZENITH state restored: window=(\d+) steps=(\d+) Z=(\S+) multiplier=(\S+) "
                         r"\(resuming at iteration (\d+)", log)
    assert restored, log[-3000:]
    window, steps, z, mult, start = restored.groups()
    assert (int(window), int(steps), int(start)) == (5, 20, 20)
    assert float(z) == float(first["zenith"]) and float(mult) == float(first["mult"])
    second = zenith_history(os.path.join(out, "model_final.pth"))
    assert int(second["count"]) == 30 and float(second["zenith"]) >= float(first["zenith"])


@pytest.mark.slow
def test_train_d2_without_detectron2_says_how_to_install(tmp_path):
    code = ("import sys, runpy; sys.modules['detectron2'] = None; sys.argv = ['train_d2.py', '--config-file', 'x']; "
            f"runpy.run_path({os.path.join(REPO, 'tools', 'train_d2.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "detectron2" in lines[0]
    # the build facts docs/detectron2.md gives: torch must be visible to the build, and pkg_resources present
    assert "--no-build-isolation" in lines[0] and "setuptools<81" in lines[0]


@pytest.mark.slow
def test_core_package_never_imports_detectron2():
    code = ("import sys, zenith_det, zenith_det.solver, zenith_det.engine, zenith_det.data, zenith_det.config; "
            "print(sorted(m for m in sys.modules if m == 'detectron2' or m.startswith('detectron2.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
