"""The trainer as a user relies on it: resume exactness, budget, checkpoints, divergence."""
import glob
import json
import os

import pytest
import torch

from zenith_det.engine import HookBase, Trainer, default_setup
from zenith_det.errors import UserError


class StopAt(HookBase):
    """Simulates a preemption: ask the loop to stop after `iteration` iterations."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter + 1 == self.iteration:
            self.trainer.request_stop("preempted")


def run(cfg, resume=False, extra_hooks=()):
    default_setup(cfg, resume=resume)
    trainer = Trainer(cfg)
    trainer.register_hooks(list(extra_hooks))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_resume_continues_bit_identically(tiny_cfg, tmp_path):
    whole = run(tiny_cfg.clone())
    expected = weights(whole)
    history = whole.optimizer.state_dict()["zenith_history"]

    cfg = tiny_cfg.clone()
    cfg.OUTPUT_DIR = str(tmp_path / "interrupted")
    first = run(cfg, extra_hooks=[StopAt(3)])
    assert first.stop_reason == "preempted" and first.iter == 3
    resumed = run(cfg, resume=True)
    assert resumed.start_iter == 3 and resumed.iter == 8
    got = weights(resumed)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    for key, value in resumed.optimizer.state_dict()["zenith_history"].items():
        assert torch.equal(value, history[key]) if torch.is_tensor(value) else value == history[key], key


@pytest.mark.slow
def test_outputs_metrics_config_and_pruned_checkpoints(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.MAX_TO_KEEP = 2
    run(cfg)
    out = cfg.OUTPUT_DIR
    assert sorted(os.path.basename(p) for p in glob.glob(f"{out}/model_*.pth")) == [
        "model_0000004.pth", "model_0000006.pth", "model_final.pth"]
    assert open(f"{out}/last_checkpoint").read() == "model_final.pth"
    records = [json.loads(line) for line in open(f"{out}/metrics.json")]
    assert records[-1]["iteration"] == 7
    assert {"total_loss", "lr", "zenith/multiplier", "zenith/grad_norm"} <= set().union(*records)
    assert all(0 < r["zenith/multiplier"] <= 1 for r in records if "zenith/multiplier" in r)
    assert glob.glob(f"{out}/events.out.tfevents.*")
    saved = open(f"{out}/config.yaml").read()
    assert "OPTIMIZER: ZENITH" in saved and "MAX_ITER: 8" in saved


class FakeTime:
    """An injected clock: each training step takes exactly one second, whatever the machine's load."""

    def __init__(self, start=0.0):
        self.now = start

    def __call__(self):
        return self.now


class Tick(HookBase):
    def __init__(self, fake):
        self.fake = fake

    def before_step(self):
        self.fake.now += 1.0


def run_with_clock(cfg, fake, resume=False):
    default_setup(cfg, resume=resume)
    trainer = Trainer(cfg, clock=fake)
    trainer.register_hooks([Tick(fake)])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_budget_stops_early_and_resume_counts_time_spent(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.MAX_ITER = 1000
    cfg.SOLVER.MAX_TIME_HOURS = 10.0 / 3600
    trainer = run_with_clock(cfg, FakeTime())
    # 1 s per step, 1 s kept for one more step: the 9th step is the last that fits in 10 s.
    assert trainer.stop_reason == "budget" and trainer.iter == 9
    # The end of the budget is the end of training: model_final.pth, as at MAX_ITER.
    assert trainer.last_good_checkpoint == os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    state = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)
    assert state["iteration"] == 9
    assert state["budget"]["spent_seconds"] == 9.0 and state["budget"]["step_seconds"] == 1.0
    again = run_with_clock(cfg, FakeTime(start=500.0), resume=True)
    assert again.clock.spent_before == 9.0
    # The budget is used up: the resumed run trains no further, it only checkpoints (and evaluates).
    assert again.stop_reason == "budget" and again.iter == again.start_iter == 9
    cfg.SOLVER.MAX_TIME_HOURS = 12.0 / 3600  # more time on resume: it is applied
    more = run_with_clock(cfg, FakeTime(), resume=True)
    assert more.iter == 11
    assert torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)["iteration"] == 11


@pytest.mark.slow
def test_budget_keeps_time_for_the_final_evaluation_before_any_has_run(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.MAX_ITER = 1000
    cfg.SOLVER.MAX_TIME_HOURS = 50.0 / 3600
    cfg.DATASETS.TEST = ("synthetic_shapes_val",)  # 64 images
    trainer = run_with_clock(cfg, FakeTime())
    # Estimate: 64 images x (1 s per step / 2 images per step + COCOeval's 0.018 s) = 33.2 s,
    # so with 1 s for one more step, step 16 is the last (16 + 1 + 33.2 >= 50).
    assert trainer.stop_reason == "budget" and trainer.iter == 16
    assert trainer.clock.eval_seconds is not None  # the final evaluation ran and was measured


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_previous(tiny_cfg, capsys):
    cfg = tiny_cfg.clone()
    run(cfg, extra_hooks=[StopAt(6)])  # checkpoints at 4 (periodic) and 6 (stop)
    latest = os.path.join(cfg.OUTPUT_DIR, "model_0000006.pth")
    with open(latest, "r+b") as f:
        f.truncate(1000)
    default_setup(cfg, resume=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4
    out = capsys.readouterr().out
    assert "model_0000006.pth is unusable" in out and "Resuming from the older checkpoint" in out


@pytest.mark.slow
def test_resume_with_changed_model_is_a_clear_error(tiny_cfg):
    cfg = tiny_cfg.clone()
    run(cfg, extra_hooks=[StopAt(2)])
    saved_config = open(os.path.join(cfg.OUTPUT_DIR, "config.yaml")).read()
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    default_setup(cfg, resume=True)
    trainer = Trainer(cfg)
    with pytest.raises(UserError, match="MODEL.FPN.OUT_CHANNELS is 32 here but 64"):
        trainer.resume_or_load(resume=True)
    # The config the error points the user to is still the one that wrote the checkpoint.
    assert open(os.path.join(cfg.OUTPUT_DIR, "config.yaml")).read() == saved_config


@pytest.mark.slow
def test_new_run_over_an_earlier_one_is_refused(tiny_cfg):
    cfg = tiny_cfg.clone()
    run(cfg, extra_hooks=[StopAt(1)])
    before = sorted(os.listdir(cfg.OUTPUT_DIR))
    with pytest.raises(UserError, match="--resume"):
        default_setup(cfg, resume=False)
    assert sorted(os.listdir(cfg.OUTPUT_DIR)) == before


class NaNLoss(HookBase):
    """Makes the model's losses NaN for the iterations in `bad`."""

    def __init__(self, bad):
        self.bad = set(bad)

    def before_train(self):
        model = self.trainer.model
        original = model.forward
        hook = self

        def forward(images, targets=None):
            losses = original(images, targets)
            if hook.trainer.iter in hook.bad:
                losses = {k: v * float("nan") for k, v in losses.items()}
            return losses

        model.forward = forward


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_then_abort(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.MAX_NONFINITE_STEPS = 3
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    snapshots = {}

    class Snap(HookBase):
        def before_step(self):
            snapshots[self.trainer.iter] = weights(self.trainer)

    trainer.register_hooks([NaNLoss({2}), Snap()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    count_after_skip = trainer.optimizer.state_dict()["zenith_history"]["count"].item()
    assert count_after_skip == 5  # six iterations, one skipped
    for key, value in snapshots[2].items():
        assert torch.equal(value, snapshots[3][key]), key

    cfg2 = tiny_cfg.clone()
    cfg2.OUTPUT_DIR = cfg.OUTPUT_DIR + "_abort"
    cfg2.SOLVER.MAX_NONFINITE_STEPS = 3
    default_setup(cfg2, resume=False)
    trainer = Trainer(cfg2)
    trainer.register_hooks([NaNLoss({4, 5, 6})])
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match=r"iteration 6.*model_0000004\.pth"):
        trainer.train()
    # The run died: no "final" checkpoint claims to be good.
    assert not os.path.exists(os.path.join(cfg2.OUTPUT_DIR, "model_final.pth"))
    assert open(os.path.join(cfg2.OUTPUT_DIR, "last_checkpoint")).read() == "model_0000004.pth"


class InfiniteGradients(HookBase):
    """From iteration `start` on, every gradient of one weight is infinite; the loss stays finite."""

    def __init__(self, start):
        self.start = start

    def before_train(self):
        model = self.trainer.model
        weight = next(p for p in model.parameters() if p.requires_grad)
        weight.register_hook(lambda g: g * float("inf") if self.trainer.iter >= self.start else g)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["ZENITH", "SGD"])
def test_persistently_non_finite_gradients_stop_the_run_as_diverged(tiny_cfg, optimizer):
    """ZENITH skips a step whose gradients are non-finite and its loss stays finite, so the loss
    rule alone never fired (the race's eta0 x4 seed 12 skipped 206 of 240 steps as "ok"). SGD
    applies them and its loss turns non-finite. Both stop as diverged within MAX_NONFINITE_STEPS
    of the first bad step, naming the iteration."""
    cfg = tiny_cfg.clone()
    cfg.SOLVER.OPTIMIZER = optimizer
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupConstantLR"
    cfg.SOLVER.MAX_ITER = 40
    cfg.SOLVER.MAX_NONFINITE_STEPS = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 0
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    trainer.register_hooks([InfiniteGradients(start=3)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match=r"iteration \d+: .*non-finite for \d+ (steps|iterations) in a row") as e:
        trainer.train()
    stopped = int(str(e.value).split()[1].rstrip(":"))
    assert 3 + 4 - 1 <= stopped < 3 + 2 * 4, str(e.value)  # at the first check after 4 bad steps
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))


@pytest.mark.slow
def test_a_trainer_is_extended_through_its_build_classmethods(tiny_cfg):
    """As detectron2's DefaultTrainer: what a subclass builds is what the run uses, evaluation included."""
    calls = []

    class MyTrainer(Trainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            calls.append("optimizer")
            return torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)

        @classmethod
        def build_train_loader(cls, cfg, start_iter=0):
            calls.append(("train_loader", start_iter))
            return super().build_train_loader(cfg, start_iter)

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, label_to_category_id=None):
            calls.append(("evaluator", dataset_name))
            return super().build_evaluator(cfg, dataset_name, label_to_category_id)

        def build_hooks(self):
            return super().build_hooks() + [StopAt(3)]

    cfg = tiny_cfg.clone()
    cfg.DATASETS.TEST = ("synthetic_shapes_val",)
    default_setup(cfg, resume=False)
    trainer = MyTrainer(cfg)
    assert type(trainer.optimizer) is torch.optim.SGD and trainer.optimizer.param_groups[0]["lr"] <= 0.001
    trainer.train()
    assert trainer.iter == 3  # the subclass's hook stopped it
    assert calls[:2] == ["optimizer", ("train_loader", 0)]
    assert ("evaluator", "synthetic_shapes_val") in calls  # the final evaluation built the subclass's evaluator
