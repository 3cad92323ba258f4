"""What the race tests share: the shipped suites and configs, and fake runs written as the runner writes them
(imported by name into each test module of this folder)."""
import json
import os
import shutil


from conftest import REPO
from zenith_det.race import claims_table as claims
from zenith_det.race import runner as race
from zenith_det.race import run_summary as record
from zenith_det.race import report_page as report
from zenith_det.race.sharpness import METHOD
from zenith_det.race.suite_format import Run


SUITES = [os.path.join(REPO, "configs", "compare", "suites", f"{name}.yaml") for name in ("cpu", "gpu")]
CONFIGS = os.path.join(REPO, "configs", "compare")


NOISE = {0: 0.0, 1: 1.0, 2: -0.7, 3: 0.4, 4: -0.3, 5: 0.8}


def _jitter(seed, k):
    return 0.05 * (((seed * 7 + k * 3) % 5) - 2)


def _fake_run(suite, summaries, run, ap, lr, optimizer, status="ok", eigen=None, final_lr=None, wd=1e-4,
              skipped=(0, 0), tmp=None):
    """What a race run leaves in its folder (metrics.json, race_stats.json or race_failed.json,
    sharpness.json), turned into its summary by the real code; the folder is then deleted,
    so everything downstream reads the summary alone."""
    vdir = os.path.join(tmp or summaries + "_runs", run.key)
    os.makedirs(vdir, exist_ok=True)
    eff = lr * (0.2 if optimizer == "ZENITH" else 1.0)
    recs = [{"iteration": it, "total_loss": 2.0 / (1 + it / 20), "lr": lr, "time": 0.4, "grad_norm": 3.0,
             "wall_seconds": 0.4 * (it + 1), "lr_effective": eff, "zenith/multiplier": 0.2} for it in range(9, 100, 10)]
    if status == "ok":
        recs += [{"iteration": 49, "bbox/AP": ap / 2, "bbox/AP50": ap},
                 {"iteration": 99, "bbox/AP": ap, "bbox/AP50": ap + 20, "segm/AP": ap + 1, "segm/AP50": ap + 21}]
    with open(os.path.join(vdir, "metrics.json"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in sorted(recs, key=lambda r: r["iteration"]))
    window = suite.arm(run.arm).overrides.get("SOLVER.ZENITH.WINDOW", 12)
    st = {"status": status, "optimizer": optimizer, "iterations": 100 if status == "ok" else 42, "window": window,
          "start": "partial", "base_lr": lr, "weight_decay": wd, "momentum": 0.9, "step_seconds_median": 0.4,
          "state_bytes_per_param": 4.0, "syncs_per_step": [0], "threads": 1, "device": "cpu", "code": "abc1234",
          "machine": "a test machine", "skipped_steps": {"nonfinite_loss": skipped[0], "nonfinite_grad": skipped[1]},
          "bn_at_eval": {"recomputed": True, "batches": 20, "why": "TEST.PRECISE_BN"}}
    if status == "failed":
        st = {"status": "failed", "returncode": 1, "error": "Traceback ...\nRuntimeError: out of memory"}
    with open(os.path.join(vdir, record.STATS if status == "ok" else record.FAILED), "w") as f:
        json.dump(st, f)
    if eigen is not None:
        implied = 2 * 1.9 / final_lr
        with open(os.path.join(vdir, record.SHARPNESS), "w") as f:
            json.dump({"method": METHOD, "eigenvalue": eigen, "lambda_min": -eigen / 10, "residual_max": 0.01,
                       "residual_min": 0.02, "hvps": 60, "converged": True, "tol": 0.05, "lr": final_lr,
                       "momentum": 0.9, "lr_implied": implied}, f)
    opts = ["SEED", str(run.seed), "OUTPUT_DIR", vdir]
    record.write_summary(summaries, run, record.build_summary(suite, run, vdir, opts, None if lr is None else lr))
    shutil.rmtree(vdir)


def _fake_race(suite, summaries, zenith_gain=3.0, wd_gain=1.0, eta_gap=0.3, w_gap=0.3, full_gap=0.0, eigen_gap=5.0,
               sgd_final_lr=0.004, wd=1e-4, skip=()):
    """Runs whose numbers are chosen so each verdict is known. Tuning: ZENITH best at 0.02,
    SGD at 0.005. Comparison: ZENITH = SGD + zenith_gain per seed (seed noise shared)."""
    for seed in suite.tuning.seeds:
        for lr, ap in ((0.01, 35.0), (0.02, 40.0)):
            _fake_run(suite, summaries, Run("zenith", seed, "tune", lr), ap + seed * 0.01, lr, "ZENITH")
        for lr, ap in ((0.005, 41.0), (0.01, 38.0)):
            _fake_run(suite, summaries, Run("sgd", seed, "tune", lr), ap + seed * 0.01, lr, "SGD")
    for s, n in NOISE.items():
        base = 40.0 + 3 * n
        rows = [("zenith", base + zenith_gain + _jitter(s, 0), 0.02, "ZENITH"),
                ("sgd", base + _jitter(s, 1), 0.005, "SGD"),
                ("zenith_full", base + zenith_gain + full_gap + _jitter(s, 2), 0.02, "ZENITH"),
                ("zenith_x2", base + zenith_gain - eta_gap + _jitter(s, 3), 0.04, "ZENITH"),
                ("zenith_w60", base + zenith_gain - w_gap + _jitter(s, 4), 0.02, "ZENITH"),
                ("zenith_wd0", base + zenith_gain - wd_gain + _jitter(s, 5), 0.02, "ZENITH"),
                ("sgd_wd0", base - 0.5 * wd_gain + _jitter(s, 6), 0.005, "SGD")]
        if s < 3:
            rows.append(("prodigy", base + zenith_gain - 0.5 + 0.1 * s, 1.0, "PRODIGY"))
        for arm, ap, lr, opt in rows:
            if (arm, s) in skip:
                continue
            eigen = final_lr = None
            if arm in ("zenith", "sgd") and s < 3:
                eigen = 20.0 + s + (eigen_gap + 0.1 * s if arm == "sgd" else 0.0)
                final_lr = 0.004 if arm == "zenith" else sgd_final_lr
            _fake_run(suite, summaries, Run(arm, s), ap, lr, opt, eigen=eigen, final_lr=final_lr,
                      wd=0.0 if arm.endswith("wd0") else wd)


def _results(suite, summaries):
    return report.collect(suite, summaries)


def _rows(res):
    return {r["claim"].split(" (")[0]: r for r in claims.claim_rows(res)}


PREREG = """
tuning: {seeds: [100, 101], grid_size: 2}
preregistration:
  primary_metric: bbox/AP
  alpha: 0.05
  correction: holm
  margins: {eta0: 2.0, W: 2.0}
  start_default: partial
  flatness_max_lr_ratio: 2.0
  weight_decay_min_shrink: 0.05
power:
  target: 0.8
  effect: 3.0
  paired_sd:
    main: {sd: 2.0, source: "a guess"}
    variants: {intervals: [[-1.0, 3.0]], n: 3}
  families: {main: main, start: variants, eta0: variants, W: variants, weight decay: variants}
  unpowered: {automatic: "a fake race"}
"""

FAKE_SUITE = """
title: fake race
seeds: 6
summaries: summaries
reference: zenith
sharpness: {arms: [zenith, sgd], seeds: 3, max_iters: 50, tol: 0.05}
arms:
  - {name: zenith, config: CONFIGS/zenith.yaml, label: ZENITH, lr: {tune: [0.01, 0.02]}}
  - {name: sgd, config: CONFIGS/sgd_multistep.yaml, label: SGD, lr: {tune: [0.005, 0.01]}}
  - {name: prodigy, config: CONFIGS/prodigy.yaml, label: Prodigy, group: automatic, seeds: 3,
     lr: {fixed: 1.0, why: "its authors' value"}}
  - {name: zenith_full, config: CONFIGS/zenith.yaml, label: ZENITH full, group: start, lr: {from: zenith},
     set: {SOLVER.ZENITH.START: full}}
  - {name: zenith_x2, config: CONFIGS/zenith.yaml, label: ZENITH x2, group: eta0, lr: {from: zenith, times: 2.0}}
  - {name: zenith_w60, config: CONFIGS/zenith.yaml, label: ZENITH W60, group: W, lr: {from: zenith},
     set: {SOLVER.ZENITH.WINDOW: 60}}
  - {name: zenith_wd0, config: CONFIGS/zenith.yaml, label: ZENITH wd0, group: weight decay, lr: {from: zenith},
     set: {SOLVER.WEIGHT_DECAY: 0.0}}
  - {name: sgd_wd0, config: CONFIGS/sgd_multistep.yaml, label: SGD wd0, group: weight decay, lr: {from: sgd},
     set: {SOLVER.WEIGHT_DECAY: 0.0}}
""" + PREREG


def _suite_file(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(text.replace("CONFIGS", CONFIGS))
    return str(path)


def _load(tmp_path, text=FAKE_SUITE):
    return race.load_suite(_suite_file(tmp_path, text))
