"""The runner, its summaries, the cost measurement and one real run (race/runner.py, race/run_process.py, race/overhead.py)."""
import json
import os
import shutil
import sys

import pytest

from zenith_det.race import runner as race
from zenith_det.race import run_summary as record
from zenith_det.plots.metrics_json import load_metrics
from zenith_det.race.overhead import measure_iteration_costs, ratio_summary, within_noise
from zenith_det.race.suite_format import Run
from race_fixtures import (  # noqa: F401
    PREREG,
    _suite_file,
    _load,
    CONFIGS,
)

scipy_stats = pytest.importorskip("scipy.stats")


CHILD = r"""
import json, os, sys
opts = sys.argv[1:]
kv = dict(zip(opts[::2], opts[1::2]))
out = kv["OUTPUT_DIR"]
os.makedirs(out, exist_ok=True)
lr = float(kv.get("SOLVER.BASE_LR", "0.02"))
seed = int(kv["SEED"])
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in out:
    sys.exit(1)
ap = 50.0 - 500.0 * abs(lr - 0.02) + 0.1 * seed
with open(os.path.join(out, "metrics.json"), "w") as f:
    f.write(json.dumps({"iteration": 9, "bbox/AP": ap, "lr": lr}) + "\n")
with open(os.path.join(out, "race_stats.json"), "w") as f:
    json.dump({"status": "ok", "optimizer": "ZENITH", "base_lr": lr, "iterations": 10, "code": "fake"}, f)
"""

RUNNER_SUITE = """
seeds: [0, 1]
summaries: summaries
arms:
  - {name: zenith, config: CONFIGS/zenith.yaml, lr: {tune: [0.01, 0.02]}}
  - {name: full, config: CONFIGS/zenith.yaml, group: start, lr: {from: zenith, times: 0.5}}
  - {name: dowg, config: CONFIGS/dowg.yaml, group: automatic, seeds: 1, lr: {none: no lr}}
""" + PREREG


@pytest.mark.slow
def test_the_runner_tunes_then_compares_and_continues_on_another_machine(tmp_path, monkeypatch):
    suite = _load(tmp_path, RUNNER_SUITE)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    started = []

    def fake_command(config, opts, resume, sharpness=None):
        started.append(dict(zip(opts[::2], opts[1::2])))
        return [sys.executable, str(child)] + list(opts)

    monkeypatch.setattr(race, "child_command", fake_command)
    monkeypatch.setenv("FAKE_FAIL", os.path.join("dowg", "seed0"))
    out = str(tmp_path / "machine1")
    race.run_suite(suite, out, jobs=2, log=lambda *_: None)
    keys = [os.path.relpath(o["OUTPUT_DIR"], out) for o in started]
    assert keys[:4] == ["zenith/tune-lr0.01/seed100", "zenith/tune-lr0.02/seed100", "zenith/tune-lr0.01/seed101",
                        "zenith/tune-lr0.02/seed101"]  # the tuning stage first
    lrs = {k: float(o.get("SOLVER.BASE_LR", "nan")) for k, o in zip(keys, started)}
    assert lrs["zenith/seed0"] == 0.02 and lrs["full/seed1"] == 0.01  # the best lr, and half of it
    assert "SOLVER.BASE_LR" not in started[keys.index("dowg/seed0")]
    s = record.read_summary(suite.summaries, Run("zenith", 1))
    assert s["status"] == "ok" and s["lr"] == 0.02 and s["final"]["bbox/AP"] == pytest.approx(50.1)
    assert "OUTPUT_DIR" not in s["options"] and s["config"] == "configs/compare/zenith.yaml"
    failed = record.read_summary(suite.summaries, Run("dowg", 0))
    assert failed["status"] == "failed" and failed["returncode"] == 1

    # another machine: no run folders, the same summaries: nothing is trained again, the
    # failure waits for --retry-failed
    started.clear()
    out2 = str(tmp_path / "machine2")
    race.run_suite(suite, out2, jobs=2, log=lambda *_: None)
    assert started == []
    monkeypatch.delenv("FAKE_FAIL")
    race.run_suite(suite, out2, jobs=2, retry_failed=True, log=lambda *_: None)
    assert [os.path.relpath(o["OUTPUT_DIR"], out2) for o in started] == ["dowg/seed0"]
    assert record.read_summary(suite.summaries, Run("dowg", 0))["status"] == "ok"

    # a run trained but not recorded (stopped between the two) is recorded, not trained again
    os.remove(record.summary_path(suite.summaries, Run("full", 0)))
    started.clear()
    race.run_suite(suite, out, jobs=1, log=lambda *_: None)
    assert started == [] and record.read_summary(suite.summaries, Run("full", 0))["lr"] == 0.01


def test_a_planned_run_probes_its_own_checkpoint_in_its_own_process(tmp_path, monkeypatch):
    from zenith_det.race import run_process as race_run

    suite = _load(tmp_path)
    plan = race._sharpness_of(suite, Run("zenith", 2))
    assert plan == (2, 50, 0.05)
    assert race._sharpness_of(suite, Run("zenith", 3)) is None  # only the planned seeds
    assert race._sharpness_of(suite, Run("prodigy", 0)) is None
    assert race._sharpness_of(suite, Run("zenith", 0, "tune", 0.01)) is None
    cmd = race.child_command("cfg.yaml", ["SEED", "2"], True, plan)
    seen = {}

    def fake_train(config, opts, resume, sharpness_after=None):
        seen.update(config=config, opts=opts, resume=resume, sharpness=sharpness_after)
        return 0

    monkeypatch.setattr(race_run, "train_one", fake_train)
    assert race_run.main(cmd[3:]) == 0
    assert seen == {"config": "cfg.yaml", "opts": ["SEED", "2"], "resume": True, "sharpness": (2, 50, 0.05)}


@pytest.mark.slow
def test_sigterm_stops_the_race_and_each_run_checkpoints(tmp_path):
    """A scheduler's SIGTERM to the race (even one started with SIGINT ignored, as a shell's
    background job is) reaches every running run, which checkpoints and exits 75; the race
    returns with their codes instead of leaving orphans behind."""
    suite_path = _suite_file(tmp_path, "seeds: [0, 1]\narms: [{name: zenith, config: CONFIGS/zenith.yaml, "
                                       "lr: {fixed: 0.02, why: test}, group: automatic}]\n"
                             + PREREG.replace("tuning: {seeds: [100, 101], grid_size: 2}\n", ""))
    child = tmp_path / "child.py"
    child.write_text(
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
        "pathlib.Path(sys.argv[1], 'started').write_text('x')\n"
        "time.sleep(60)\n")
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import json, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from zenith_det.race import runner as race\n"
        f"race.child_command = lambda config, opts, resume, sharpness=None: [sys.executable, {str(child)!r}, "
        "opts[opts.index('OUTPUT_DIR') + 1]]\n"
        f"codes = race.run_suite(race.load_suite({suite_path!r}), {str(tmp_path / 'out')!r}, jobs=2)\n"
        "print(json.dumps(sorted(codes.values())))\n")
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    for _ in range(300):
        if all((tmp_path / "out" / "zenith" / f"seed{s}" / "started").exists() for s in (0, 1)):
            break
        time.sleep(0.1)
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and json.loads(out.strip().splitlines()[-1]) == [75, 75]
    assert not os.path.exists(tmp_path / "out" / "summaries")  # preempted runs have no outcome yet


def test_cost_ratios_and_noise():
    costs = {"sgd": {"step_seconds": [1.0, 1.0, 1.0]}, "zen": {"step_seconds": [1.2, 0.9, 1.1]},
             "slow": {"step_seconds": [2.0, 2.2, 1.9]}}
    summary = ratio_summary(costs, "sgd", "step_seconds")
    assert summary["zen"]["ratio_median"] == pytest.approx(1.1) and within_noise(summary["zen"])
    assert summary["slow"]["ratio_min"] == pytest.approx(1.9) and not within_noise(summary["slow"])


@pytest.mark.slow
def test_costs_are_measured_for_real_arms(tiny_cfg):
    from zenith_det.config import load_config

    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    configs = {name: load_config(os.path.join(CONFIGS, f"{name}.yaml"), opts)
               for name in ("zenith", "sgd_multistep", "dog", "alig", "schedulefree_sgd")}
    costs = measure_iteration_costs(configs, rounds=2, block=1)
    for c in costs.values():
        assert len(c["step_seconds"]) == 2 and all(0 < s < i for s, i in zip(c["step_seconds"], c["iteration_seconds"]))


@pytest.mark.slow
def test_one_real_run_writes_stats_skips_and_probe_metrics(datasets_root, tmp_path, monkeypatch):
    """A real run, stopped and resumed: two iterations with a non-finite loss in the first
    session are counted in the final stats, with the BatchNorm treatment and the machine."""
    import torch

    from zenith_det.race import probes

    from zenith_det.race import run_process as race_run
    from zenith_det.engine import Trainer

    calls = {"n": 0}
    build = Trainer.build_model.__func__

    def poisoned(cls, cfg, metadata):
        model = build(cls, cfg, metadata)
        forward = model.forward

        def wrapped(images, targets=None):
            out = forward(images, targets)
            if targets is not None:
                calls["n"] += 1
                if calls["n"] in (2, 3):
                    out = {k: v * float("nan") for k, v in out.items()}
            return out

        model.forward = wrapped
        return model

    monkeypatch.setattr(Trainer, "build_model", classmethod(poisoned))
    out = str(tmp_path / "child")
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.ZENITH.WINDOW", "5", "DATASETS.TEST", "()", "LOG_PERIOD", "2",
            "OUTPUT_DIR", out]
    monkeypatch.setattr(race_run, "SYNC_START", 2)
    assert probes.SYNC_STEPS == 5
    config = os.path.join(CONFIGS, "zenith.yaml")
    assert race_run.train_one(config, opts, resume=False) == 0
    os.remove(os.path.join(out, race.STATS))
    opts[opts.index("SOLVER.MAX_ITER") + 1] = "6"
    assert race_run.train_one(config, opts, resume=True) == 0
    st = json.load(open(os.path.join(out, race.STATS)))
    assert st["iterations"] == 6 and st["optimizer"] == "ZENITH" and st["seed"] >= 0
    assert st["skipped_steps"] == {"nonfinite_loss": 2, "nonfinite_grad": 0}
    assert st["bn_at_eval"]["recomputed"] is False and st["momentum"] == 0.9 and "CPU" in st["machine"]
    assert st["state_bytes_per_param"] == pytest.approx(4.0, abs=0.05)
    recs = load_metrics(out)
    assert any("wall_seconds" in r for r in recs) and any("lr_effective" in r for r in recs)
    assert torch.isfinite(torch.tensor([r["total_loss"] for r in recs if "total_loss" in r])).all()


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["zenith.yaml", "sgd_multistep.yaml"])
def test_a_run_whose_steps_are_skipped_persistently_is_recorded_as_diverged(config_name, datasets_root, tmp_path,
                                                                            monkeypatch):
    """Gradients made infinite from the third iteration on: ZENITH skips those steps with a finite
    loss (the earlier race recorded such a run "ok" with 0 AP), SGD's loss turns non-finite. Both
    runs end as diverged, exit 3, with their skipped steps counted, and the summary says so."""
    from zenith_det.engine import Trainer
    from zenith_det.exit_codes import DIVERGED
    from zenith_det.race import run_process as race_run

    build = Trainer.build_model.__func__
    calls = {"n": 0}

    def poisoned(cls, cfg, metadata):
        model = build(cls, cfg, metadata)
        weight = next(p for p in model.parameters() if p.requires_grad)

        def hook(grad):
            calls["n"] += 1
            return grad * float("inf") if calls["n"] >= 3 else grad

        weight.register_hook(hook)
        return model

    monkeypatch.setattr(Trainer, "build_model", classmethod(poisoned))
    out = str(tmp_path / "child")
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "30", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.ZENITH.WINDOW", "5", "SOLVER.MAX_NONFINITE_STEPS", "4",
            "DATASETS.TEST", "()", "LOG_PERIOD", "2", "OUTPUT_DIR", out]
    assert race_run.train_one(os.path.join(CONFIGS, config_name), opts, resume=False) == DIVERGED
    failed = json.load(open(os.path.join(out, race.FAILED)))
    assert failed["status"] == "diverged" and "in a row" in failed["error"]
    skipped = failed["skipped_steps"]
    assert skipped["nonfinite_grad" if config_name == "zenith.yaml" else "nonfinite_loss"] >= 4
    assert failed["iterations"] < 30
    suite = _load(tmp_path)
    summary = record.build_summary(suite, Run("zenith", 0), out, opts[:-2], 0.02)
    assert summary["status"] == "diverged" and summary["skipped_steps"] == skipped


REPROBE_CHILD = CHILD + r"""
with open(os.path.join(out, "sharpness.json"), "w") as f:
    json.dump({"method": "lanczos-exact-hvp", "eigenvalue": 7.0, "lambda_min": -1.0, "residual_max": 1e-4,
               "residual_min": 1e-4, "hvps": 40, "converged": True, "tol": 0.05, "lr": lr, "momentum": 0.9,
               "lr_implied": 1.0}, f)
"""

REPROBE_SUITE = """
seeds: [0, 1]
summaries: summaries
arms:
  - {name: zenith, config: CONFIGS/zenith.yaml, lr: {tune: [0.01, 0.02]}}
sharpness: {arms: [zenith], seeds: 2, max_iters: 50, tol: 0.05}
""" + PREREG


@pytest.mark.slow
def test_a_probe_of_another_method_is_redone_on_a_retrained_run_that_reproduces_its_summary(tmp_path, monkeypatch):
    """The committed summaries carry finite-difference probes and no checkpoint: each run is trained
    again from its summary's options and its new probe kept only where the final AP is the same."""
    suite = _load(tmp_path, REPROBE_SUITE)
    child = tmp_path / "child.py"
    child.write_text(REPROBE_CHILD)
    monkeypatch.setattr(race, "child_command",
                        lambda config, opts, resume, sharpness=None: [sys.executable, str(child)] + list(opts))
    out = str(tmp_path / "machine")
    race.run_suite(suite, out, jobs=1, log=lambda *_: None)
    for seed in (0, 1):  # as committed before: an old probe, and no checkpoint on this machine
        s = record.read_summary(suite.summaries, Run("zenith", seed))
        s["sharpness"] = {"eigenvalue": 80.0, "estimates": [70.0, 80.0], "residuals": [0.3, 0.2], "converged": False}
        if seed == 1:
            s["final"]["bbox/AP"] += 1.0  # a summary this code does not reproduce
        record.write_summary(suite.summaries, Run("zenith", seed), s)
    shutil.rmtree(out)
    said = []
    race.run_sharpness(suite, out, log=said.append)
    redone = record.read_summary(suite.summaries, Run("zenith", 0))["sharpness"]
    assert redone["method"] == "lanczos-exact-hvp" and redone["eigenvalue"] == 7.0 and redone["lambda_min"] == -1.0
    kept = record.read_summary(suite.summaries, Run("zenith", 1))["sharpness"]
    assert kept["eigenvalue"] == 80.0  # not replaced by a probe of other weights
    assert any("does not reproduce its summary's final AP" in line for line in said)
