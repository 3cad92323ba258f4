"""The race (zenith_det/race, tools/compare.py): the statistics on designed data whose right
answer is known, suite files and their pre-registration, the tuning stage, the runner and its
summaries, the verdicts computed from runs, the report rebuilt from the summaries alone, the
cost measurement, and one real run."""
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

from conftest import REPO, load_tool
from zenith_det.race import claims_table as claims
from zenith_det.race import power
from zenith_det.race import runner as race
from zenith_det.race import run_summary as record
from zenith_det.race import report_page as report
from zenith_det.race import report_tables
from zenith_det.race import paired_runs as results
from zenith_det.race import stats
from zenith_det.race import verdict_rules as verdicts
from zenith_det.race import weight_claims
from zenith_det.plots.metrics_json import load_metrics
from zenith_det.race.overhead import measure_iteration_costs, ratio_summary, within_noise
from zenith_det.race.suite_format import Run
from zenith_det.errors import UserError

scipy_stats = pytest.importorskip("scipy.stats")

SUITES = [os.path.join(REPO, "configs", "compare", "suites", f"{name}.yaml") for name in ("cpu", "gpu")]
CONFIGS = os.path.join(REPO, "configs", "compare")


# ------------------------------------------------------------------------------ statistics


def test_t_quantiles_are_exact_at_every_dof():
    """The old table stopped at 10 dof and used 1.96 beyond: 5-12% too narrow from 12 to 31 seeds."""
    for dof in (1, 2, 5, 10, 11, 15, 20, 30, 39, 200):
        assert stats.t975(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), rel=1e-12)
    assert stats.t975(15) == pytest.approx(2.1314, abs=1e-4) and stats.t975(30) == pytest.approx(2.0423, abs=1e-4)
    assert stats.t975(0) == math.inf
    s = stats.Summary([1.0, 2.0, 3.0])
    lo, hi = s.ci95()
    assert s.mean == 2.0 and s.sd == 1.0 and hi - 2.0 == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert stats.Summary([2.0]).ci95() == (-math.inf, math.inf)


@pytest.mark.parametrize("n", [4, 12, 31])
def test_the_95_interval_covers_a_known_mean_95_percent_of_the_time(n):
    """Simulated paired differences with a known mean: the t interval covers it in ~95% of
    4000 draws; the old 1.96 beyond 10 dof covered too rarely at 12 seeds."""
    rng = np.random.default_rng(n)
    true_mean, draws = 1.3, 4000
    data = rng.normal(true_mean, 2.0, size=(draws, n))
    covered = normal_covered = 0
    for row in data:
        s = stats.Summary(row)
        lo, hi = s.ci95()
        covered += lo <= true_mean <= hi
        normal_covered += abs(s.mean - true_mean) <= 1.96 * s.se
    assert 0.94 <= covered / draws <= 0.96
    if n == 12:
        assert normal_covered / draws < 0.935


def test_paired_t_p_is_the_one_sample_t_test():
    rng = np.random.default_rng(1)
    for n in (3, 8, 30):
        x = rng.normal(0.5, 1.0, n)
        assert stats.paired_t_p(stats.Summary(x)) == pytest.approx(scipy_stats.ttest_1samp(x, 0.0).pvalue, rel=1e-9)
    assert stats.paired_t_p(stats.Summary([1.0])) == 1.0
    assert stats.paired_t_p(stats.Summary([2.0, 2.0, 2.0])) == 0.0  # no spread, not 0: certain


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06 for the last
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5] and stats.holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])
    assert stats.holm([]) == []
    # the family-wise error rate under the null: any adjusted p below 0.05 in at most ~5% of families
    rng = np.random.default_rng(2)
    families = rng.uniform(size=(4000, 5))
    assert np.mean([min(stats.holm(list(p))) < 0.05 for p in families]) <= 0.055
    # while unadjusted, five tests reject somewhere in ~23% of families
    assert np.mean((families < 0.05).any(axis=1)) > 0.2


def test_tost_accepts_and_rejects_constructed_data():
    rng = np.random.default_rng(3)
    close = stats.Summary(0.2 + rng.normal(0, 1.0, 40))  # mean ~0.2, SE ~0.16: well inside +-1
    assert stats.tost_p(close, 1.0) < 0.01 and stats.beyond_margin_p(close, 1.0) > 0.5
    noisy = stats.Summary(rng.normal(0.0, 3.0, 4))  # no difference, but four seeds cannot show equivalence
    assert stats.tost_p(noisy, 1.0) > 0.05 and stats.paired_t_p(noisy) > 0.05
    far = stats.Summary(3.0 + rng.normal(0, 0.5, 10))
    assert stats.tost_p(far, 1.0) > 0.99 and stats.beyond_margin_p(far, 1.0) < 0.001
    below = stats.Summary(-3.0 + rng.normal(0, 0.5, 10))
    assert stats.beyond_margin_p(below, 1.0) < 0.001
    # TOST at alpha is the (1 - 2 alpha) interval lying inside the margin
    for _ in range(50):
        s = stats.Summary(rng.normal(rng.uniform(-1.5, 1.5), 1.0, 12))
        lo, hi = s.ci(0.90)
        assert (stats.tost_p(s, 1.0) < 0.05) == (-1.0 < lo and hi < 1.0)
    # at the margin itself, TOST declares equivalence in at most alpha of the draws
    at_margin = [stats.tost_p(stats.Summary(row), 1.0) < 0.05 for row in rng.normal(1.0, 1.0, (3000, 12))]
    assert np.mean(at_margin) <= 0.06


def test_sd_from_an_interval_inverts_the_interval():
    s = stats.Summary([1.0, 4.0, -2.0, 3.5])
    lo, hi = s.ci95()
    assert stats.sd_from_interval(lo, hi, 4) == pytest.approx(s.sd)
    # the paired SD of ZENITH vs SGD multi-step behind docs/RESULTS.md's -4.0 [-18.8, +10.7] (3 seeds)
    assert stats.sd_from_interval(-18.8, 10.7, 3) == pytest.approx(5.94, abs=0.01)


def test_power_matches_simulation():
    rng = np.random.default_rng(4)
    n, effect, sd, alpha = 12, 1.5, 2.0, 0.05
    draws = rng.normal(effect, sd, (4000, n))
    simulated = np.mean([stats.paired_t_p(stats.Summary(row)) < alpha for row in draws])
    assert power.power_paired_t(n, effect, sd, alpha) == pytest.approx(simulated, abs=0.03)
    draws = rng.normal(0.0, sd, (4000, n))
    simulated = np.mean([stats.tost_p(stats.Summary(row), 2.5) < alpha for row in draws])
    assert power.power_tost(n, 2.5, sd, alpha) == pytest.approx(simulated, abs=0.03)
    # the independent estimate in the issue: ~30 paired seeds, ~85% power for 3 box AP at a paired SD ~5.5
    assert power.power_paired_t(30, 3.0, 5.5, 0.05) == pytest.approx(0.82, abs=0.03)
    assert power.seeds_for(0.8, lambda k: power.power_paired_t(k, 3.0, 5.94, 0.025)) == 40


# ------------------------------------------------------------------------------ suite files


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


MINIMAL = "seeds: [0, 1]\narms: [{name: a, config: CONFIGS/zenith.yaml, lr: {tune: [0.01, 0.02]}}]\n" + PREREG


@pytest.mark.parametrize("text, field", [
    ("arms: []", "arms"),
    ("arms: [{name: a}]", "arms[0]"),
    ("arms: [{name: a, config: nowhere.yaml}]", "does not exist"),
    ("seeds: [0]\narms: [{name: a, config: CONFIGS/zenith.yaml, seeds: [1], lr: {tune: [0.01, 0.02]}}]", "not among"),
    ("seeds: [-1]\narms: [{name: a, config: CONFIGS/zenith.yaml}]", "seeds must be"),
    ("mode: fast\narms: [{name: a, config: CONFIGS/zenith.yaml}]", "mode 'fast'"),
    ("mode: wall_clock\n" + MINIMAL, "budget_hours"),
    ("arms: [{name: a/b, config: CONFIGS/zenith.yaml}]", "names a folder"),
    ("arms: [", "not a YAML"),
    (MINIMAL.replace("name: a,", "name: a, group: fancy,"), "group 'fancy'"),
    (MINIMAL.replace(", lr: {tune: [0.01, 0.02]}", ""), "arms[0].lr"),
    (MINIMAL.replace("lr: {tune: [0.01, 0.02]}", "lr: {fixed: 1.0}"), "why"),
    (MINIMAL.replace("lr: {tune: [0.01, 0.02]}", "lr: {none: no lr}"), "main comparison runs at its own best lr"),
    (MINIMAL.replace("[0.01, 0.02]", "[0.01, 0.02, 0.04]"), "grid_size is 2"),
    (MINIMAL.replace("lr: {tune", "set: {SOLVER.BASE_LR: 0.1}, lr: {tune"), "both choose the lr"),
    (MINIMAL + "reference: b\n", "reference 'b'"),
    (MINIMAL + "sharpness: [z]\n", "sharpness"),
    (MINIMAL.replace("seeds: [100, 101]", "seeds: [1, 100]"), "tuning.seeds [1]"),
    (MINIMAL.replace("preregistration:", "preregistratio:"), "preregistration"),
    (MINIMAL.replace("primary_metric: bbox/AP", "primary_metric: loss"), "primary_metric"),
    (MINIMAL.replace("alpha: 0.05", "alpha: 5"), "preregistration.alpha"),
    (MINIMAL.replace("correction: holm", "correction: none"), "preregistration.correction"),
    (MINIMAL.replace("weight_decay_min_shrink: 0.05", "weight_decay_min_shrink: 2"), "weight_decay_min_shrink"),
    (MINIMAL.replace("target: 0.8", "target: 80"), "power.target"),
    (MINIMAL.replace("families: {main: main,", "families: {main: nothing,"), "power.families.main"),
    (MINIMAL.replace("power:", "powr:"), "power"),
    (MINIMAL.replace("n: 3}", "n: 1}"), "paired_sd.variants.n"),
    (MINIMAL.replace("grid_size: 2}", "grid_size: 2, extend_at_edge: -1}"), "tuning.extend_at_edge"),
    (MINIMAL.replace("grid_size: 2}", "grid_size: 2, extend_at_edge: yes}"), "tuning.extend_at_edge"),
    (MINIMAL.replace("grid_size: 2}", "grid_size: 2, amended: ''}"), "tuning.amended"),
    (MINIMAL.replace("grid_size: 2}", "grid_size: 2, extend: 1}"), "tuning.extend is not a field"),
])
def test_a_bad_suite_file_is_one_line_naming_the_field(tmp_path, text, field):
    path = _suite_file(tmp_path, text)
    with pytest.raises(UserError, match=re.escape(field)) as e:
        race.load_suite(path)
    assert path in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arm, field", [
    ("{name: w, config: CONFIGS/zenith.yaml, group: W, lr: {from: a}}", "margins.W"),
    ("{name: w, config: CONFIGS/zenith.yaml, group: start, lr: {from: a}}", None),
    ("{name: w, config: CONFIGS/zenith.yaml, group: automatic, lr: {from: nobody}}", "must name an arm whose lr is tuned"),
    ("{name: w, config: CONFIGS/zenith.yaml, group: automatic, lr: {fixed: 1.0, why: x}}", "power.families"),
])
def test_every_group_needs_its_declarations(tmp_path, arm, field):
    text = MINIMAL.replace("margins: {eta0: 2.0, W: 2.0}", "margins: {eta0: 2.0}").replace(
        "unpowered: {automatic: \"a fake race\"}", "unpowered: {}")
    text = text.replace("lr: {tune: [0.01, 0.02]}}]", "lr: {tune: [0.01, 0.02]}}, " + arm + "]")
    path = _suite_file(tmp_path, text)
    if field is None:
        race.load_suite(path)  # start arms need no margin
        return
    with pytest.raises(UserError, match=re.escape(field)):
        race.load_suite(path)


def test_compare_exits_2_on_a_bad_suite(tmp_path, capsys):
    compare = load_tool("compare")
    assert compare.main(["--suite", _suite_file(tmp_path, "arms: []"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "suite.yaml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", SUITES)
def test_the_shipped_suites_are_fair_powered_and_build_a_config_for_every_run(path):
    from zenith_det.config import load_config

    suite = race.load_suite(path)
    runs = suite.all_runs()
    assert len({r.key for r in runs}) == len(runs)
    # the tuning stage first, on seeds the comparison does not use; then the comparison, seed-major
    tuning = [r for r in runs if r.stage == "tune"]
    assert runs[:len(tuning)] == tuning and not {r.seed for r in tuning} & set(suite.seeds)
    compare = [r for r in runs if r.stage == "compare"]
    first_seed1 = next(i for i, r in enumerate(compare) if r.seed == 1)
    assert all(r.seed == 0 for r in compare[:first_seed1])
    # its header states its size
    with open(path) as f:
        header = f.read()
    assert re.search(rf"\b{len(runs)} training runs\b", header)
    # fair arms: every main arm tunes a grid of the same size; every arm declares how its lr is chosen
    main = suite.group("main")
    assert {len(a.lr.grid) for a in main} == {suite.tuning.grid_size} and all(a.seeds == suite.seeds for a in main)
    choices = {a.name: race.Choice(a.name, a.lr.grid[1], [], "test") for a in suite.arms if a.lr.kind == "tune"}
    for run in runs:
        arm = suite.arm(run.arm)
        lr = run.lr if run.stage == "tune" else race.resolve_lr(suite, arm, choices)[0]
        opts = race.run_options(suite, arm, run.seed, "out", lr=lr, key=run.key)
        cfg = load_config(arm.config, opts + ["MODEL.DEVICE", "cpu"])  # the GPU suite's cuda, checked below
        assert cfg.SOLVER.MAX_TIME_HOURS == 0.0 and cfg.SEED == run.seed and cfg.TEST.PRECISE_BN.ENABLED
        assert cfg.OUTPUT_DIR == os.path.join("out", run.key)
        if lr is not None:
            assert cfg.SOLVER.BASE_LR == pytest.approx(lr)
        if cfg.SOLVER.OPTIMIZER == "ZENITH":  # every run is at least 10x the smallest window
            assert cfg.SOLVER.MAX_ITER >= 10 * 5
    assert (opts[opts.index("MODEL.DEVICE") + 1] == "cuda") if "gpu" in path else "MODEL.DEVICE" not in opts
    # powered: every planned family reaches the target at its declared seeds
    res = results.RaceResults(suite, {})
    lines = "\n".join(report.power_lines(res))
    for group in suite.power.families:
        row = next(line for line in lines.splitlines() if line.startswith(f"| {group} |"))
        assert float(row.split("|")[8]) >= suite.power.target, row
    assert set(suite.power.unpowered) == {"automatic"} and all(len(a.seeds) == 3 for a in suite.group("automatic"))
    assert {a.overrides.get("SOLVER.ZENITH.START") for a in suite.group("start")} == {"full", "after_warmup"}
    assert suite.prereg.start_default == "partial"


def test_dog_and_ldog_run_as_their_authors_run_them():
    """DoG's authors: c = lr = 1 ("should not be changed"), no lr scheduler in their example;
    a warmup would scale c itself."""
    import torch

    from zenith_det.config import load_config
    from zenith_det.solver import build_lr_scheduler

    for name in ("dog.yaml", "ldog.yaml"):
        cfg = load_config(os.path.join(CONFIGS, name))
        assert cfg.SOLVER.BASE_LR == 1.0 and cfg.SOLVER.WARMUP_ITERS == 0
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.SOLVER.BASE_LR)
        sched = build_lr_scheduler(cfg, opt)
        lrs = []
        for _ in range(cfg.SOLVER.MAX_ITER):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert set(lrs) == {1.0}


# ------------------------------------------------------------------------------ fake runs


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
            json.dump({"eigenvalue": eigen, "estimates": [eigen * 0.9, eigen], "residuals": [0.1, 0.01], "converged": True,
                       "tol": 0.05, "lr": final_lr, "momentum": 0.9, "lr_implied": implied}, f)
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


# ------------------------------------------------------------------------------ tuning


def test_the_tuning_stage_chooses_the_best_lr_that_did_not_diverge(tmp_path):
    suite = _load(tmp_path)
    summaries = suite.summaries
    _fake_race(suite, summaries)
    res = _results(suite, summaries)
    assert res.choices["zenith"].lr == 0.02 and res.choices["sgd"].lr == 0.005
    assert res.choices["sgd"].edge  # best at the grid's lowest point: the report says the optimum may lie beyond
    # lrs derived from a choice
    assert race.resolve_lr(suite, suite.arm("zenith_x2"), res.choices) == (0.04, None)
    assert race.resolve_lr(suite, suite.arm("prodigy"), res.choices) == (1.0, None)
    # a point that diverged on a tuning seed is not chosen, however good the other seed
    _fake_run(suite, summaries, Run("zenith", 101, "tune", 0.02), 0.0, 0.02, "ZENITH", status="diverged")
    res = _results(suite, summaries)
    assert res.choices["zenith"].lr == 0.01
    # ZENITH's comparison runs trained at 0.02 are now stale: named, and no verdict uses them
    assert res.status("zenith", 0) == "stale"
    assert any("ZENITH seed 0: stale" in p for p in res.problems())
    assert _rows(res)["more AP than hand-made schedules at the same budget"]["verdict"] == verdicts.UNDECIDED
    # a missing tuning run leaves the choice open, and every arm that depends on it waits
    os.remove(record.summary_path(summaries, Run("zenith", 100, "tune", 0.01)))
    res = _results(suite, summaries)
    assert res.choices["zenith"].lr is None and "missing" in res.choices["zenith"].reason
    lr, waiting = race.resolve_lr(suite, suite.arm("zenith_full"), res.choices)
    assert lr is None and "waiting for the lr of ZENITH" in waiting


def test_the_edge_rule_searches_beyond_an_edge_until_the_best_is_inside(tmp_path):
    suite = _load(tmp_path, FAKE_SUITE.replace("grid_size: 2}", "grid_size: 2, extend_at_edge: 2, amended: a test}"))
    summaries = suite.summaries
    _fake_race(suite, summaries)  # best: ZENITH 0.02 (the high edge of its grid), SGD 0.005 (the low edge)
    res = _results(suite, summaries)
    # each choice waits for the next point beyond its edge, and names the missing runs
    assert res.choices["zenith"].lr is None and res.choices["zenith"].added == (0.04,)
    assert res.choices["sgd"].lr is None and res.choices["sgd"].added == (0.0025,)
    assert "SGD seed 100 (tuning, lr 0.0025) missing" in res.choices["sgd"].reason
    assert race.resolve_lr(suite, suite.arm("zenith_x2"), res.choices)[0] is None
    assert any("(tuning, lr 0.0025): missing" in p for p in res.problems())
    # ZENITH is worse beyond its edge: 0.02 stands, inside the searched grid
    for seed in suite.tuning.seeds:
        _fake_run(suite, summaries, Run("zenith", seed, "tune", 0.04), 39.0, 0.04, "ZENITH")
        _fake_run(suite, summaries, Run("sgd", seed, "tune", 0.0025), 43.0, 0.0025, "SGD")
    res = _results(suite, summaries)
    zenith = res.choices["zenith"]
    assert zenith.lr == 0.02 and not zenith.edge and zenith.added == (0.04,) and "edge rule added lr 0.04" in zenith.reason
    assert [p[0] for p in zenith.points] == [0.01, 0.02, 0.04]
    assert res.status("zenith", 0) == "ok"  # the comparison at 0.02 stays valid
    # SGD is better beyond its edge, so the rule goes one more point down, then stops at its limit
    assert res.choices["sgd"].lr is None and res.choices["sgd"].added == (0.0025, 0.00125)
    for seed in suite.tuning.seeds:
        _fake_run(suite, summaries, Run("sgd", seed, "tune", 0.00125), 44.0, 0.00125, "SGD")
    res = _results(suite, summaries)
    sgd = res.choices["sgd"]
    assert sgd.lr == 0.00125 and sgd.edge and sgd.added == (0.0025, 0.00125)
    assert res.status("sgd", 0) == "stale"  # trained at 0.005, no longer the choice
    text = "\n".join(report_tables.tuning_lines(res) + report.prereg_lines(res))
    assert "| SGD | 0.00125 (edge rule) | 44.0" in text and "**yes** (edge of the grid)" in text
    assert "up to 2 per arm" in text and "Amended after runs began** (tuning): a test." in text
    assert "(0.005, 0.01) on tuning seeds 100, 101; the edge rule added 0.0025, 0.00125 | 0.00125 |" in text
    assert len(res.needed_runs()) == len(suite.all_runs()) + 6


# ------------------------------------------------------------------------------ verdicts


def test_verdicts_follow_the_numbers(tmp_path):
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries, zenith_gain=3.0, wd=2.0)
    rows = _rows(_results(suite, suite.summaries))
    hand = rows["more AP than hand-made schedules at the same budget"]
    assert hand["verdict"] == verdicts.SUPPORTED
    assert "vs SGD: +3.0 [+2.8, +3.1] (n=6), p(Holm) <0.001" in hand["numbers"]
    assert rows["more AP than automatic-LR methods"]["verdict"] == verdicts.SUPPORTED
    assert rows["insensitive to eta0"]["verdict"] == verdicts.SUPPORTED
    assert "final effective lr 0.008" in rows["insensitive to eta0"]["numbers"]  # eta0 0.04 x ZENITH's multiplier 0.2
    assert rows["insensitive to W"]["verdict"] == verdicts.SUPPORTED
    assert rows["compatible with weight decay"]["verdict"] == verdicts.SUPPORTED
    assert rows["flatter minima"]["verdict"] == verdicts.SUPPORTED
    assert rows["start-up default"]["verdict"] == "none wins beyond the noise: keep partial"

    out = tmp_path / "behind"
    out.mkdir()
    suite = _load(out)
    _fake_race(suite, suite.summaries, zenith_gain=-3.0, wd_gain=-2.0, eta_gap=6.0, w_gap=6.0, full_gap=2.0,
               eigen_gap=-5.0, wd=2.0)
    rows = _rows(_results(suite, suite.summaries))
    for claim in ("more AP than hand-made schedules at the same budget", "insensitive to eta0", "insensitive to W",
                  "compatible with weight decay", "flatter minima"):
        assert rows[claim]["verdict"] == verdicts.REFUTED, claim
    assert rows["start-up default"]["verdict"] == "full wins beyond the noise"


def test_the_start_up_default_stays_unless_another_choice_wins(tmp_path):
    text = FAKE_SUITE.replace(
        "  - {name: zenith_x2",
        "  - {name: zenith_aw, config: CONFIGS/zenith.yaml, label: ZENITH aw, group: start, lr: {from: zenith},\n"
        "     set: {SOLVER.ZENITH.START: after_warmup}}\n  - {name: zenith_x2")
    for name, full_gap, aw_gap, verdict in (
            ("tie", 0.0, 0.0, "none wins beyond the noise: keep partial"),
            ("full", 2.0, 0.0, "full wins beyond the noise"),
            ("split", 2.0, 2.0, "undecided: partial is behind full, after_warmup beyond the noise, but no choice is ahead "
                                "of every other")):
        folder = tmp_path / name
        folder.mkdir()
        suite = _load(folder, text)
        _fake_race(suite, suite.summaries, full_gap=full_gap)
        for s, n in NOISE.items():
            _fake_run(suite, suite.summaries, Run("zenith_aw", s), 40.0 + 3 * n + 3.0 + aw_gap + _jitter(s, 7), 0.02, "ZENITH")
        res = _results(suite, suite.summaries)
        assert verdicts.start_decision(res)["verdict"] == verdict, name


def test_insensitivity_needs_an_equivalence_test_not_an_absent_difference(tmp_path):
    """One run per W setting that lands on the reference is absence of evidence: undecided.
    With six paired seeds the same closeness is shown equivalent within the margin."""
    text = FAKE_SUITE.replace("label: ZENITH W60, group: W,", "label: ZENITH W60, group: W, seeds: 1,")
    suite = _load(tmp_path, text)
    _fake_race(suite, suite.summaries, w_gap=0.0)
    row = _rows(_results(suite, suite.summaries))["insensitive to W"]
    assert row["verdict"] == verdicts.UNDECIDED and "(n=1)" in row["numbers"]
    other = tmp_path / "six"
    other.mkdir()
    suite = _load(other)
    _fake_race(suite, suite.summaries, w_gap=0.0)
    row = _rows(_results(suite, suite.summaries))["insensitive to W"]
    assert row["verdict"] == verdicts.SUPPORTED and "margin ±2 box AP (declared)" in row["numbers"]
    # exactly at the 2 AP margin: neither equivalent nor beyond it
    other = tmp_path / "edge"
    other.mkdir()
    suite = _load(other)
    _fake_race(suite, suite.summaries, w_gap=2.0)
    assert _rows(_results(suite, suite.summaries))["insensitive to W"]["verdict"] == verdicts.UNDECIDED


def test_holm_decides_within_the_family(tmp_path):
    """The family's p-values are adjusted together: each comparison's reported p is Holm's."""
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries, zenith_gain=0.2)
    res = _results(suite, suite.summaries)
    raw = [stats.paired_t_p(results.pair(res, "zenith", a).diff) for a in ("sgd",)]
    tested = verdicts.superiority(res, "zenith", ["sgd"])
    assert tested[0].p_adj == pytest.approx(stats.holm(raw)[0])
    tost, beyond, margin = verdicts.equivalence(res, "W")
    assert margin == 2.0 and tost[0].p_adj == pytest.approx(stats.tost_p(tost[0].pairing.diff, 2.0))


def test_a_diverged_run_is_its_own_outcome_not_zero_ap(tmp_path):
    suite = _load(tmp_path)
    summaries = suite.summaries
    _fake_race(suite, summaries, zenith_gain=3.0, eta_gap=0.2)
    _fake_run(suite, summaries, Run("zenith_x2", 4), 0.0, 0.04, "ZENITH", status="diverged")
    res = _results(suite, summaries)
    assert res.status("zenith_x2", 4) == "diverged" and res.values("zenith_x2").get(4) is None
    row = _rows(res)["insensitive to eta0"]
    assert row["diverged"] == "ZENITH x2 1/6 (at iteration 42)"
    assert "(n=5) (1 pair left out: diverged)" in row["numbers"]
    assert row["verdict"] == verdicts.SUPPORTED  # the AP test on the five that finished
    assert not any("ZENITH x2 seed 4" in p for p in res.problems())  # an outcome, not a missing run
    text = "\n".join(report_tables.grid_lines(res, "eta0"))
    assert "| ZENITH x2 | 0.04 | 0.008 | 0.200 | 5/6 |" in text


def test_missing_crashed_and_unpaired_runs_are_named_and_leave_the_claim_undecided(tmp_path):
    suite = _load(tmp_path)
    summaries = suite.summaries
    _fake_race(suite, summaries, zenith_gain=3.0, skip={("sgd", 5)})
    _fake_run(suite, summaries, Run("prodigy", 1), 0.0, 1.0, "PRODIGY", status="failed")
    res = _results(suite, summaries)
    problems = res.problems()
    assert "SGD seed 5: missing" in problems
    assert any(p.startswith("Prodigy seed 1: failed: RuntimeError: out of memory") for p in problems)
    rows = _rows(res)
    hand = rows["more AP than hand-made schedules at the same budget"]
    assert hand["verdict"] == verdicts.UNDECIDED and "incomplete (SGD seed 5 missing, ZENITH's unpaired)" in hand["numbers"]
    assert rows["more AP than automatic-LR methods"]["verdict"] == verdicts.UNDECIDED
    # a refutation by a complete comparison needs no missing run
    other = tmp_path / "behind"
    other.mkdir()
    suite = _load(other, FAKE_SUITE.replace(
        "  - {name: prodigy",
        "  - {name: sgd2, config: CONFIGS/sgd_cosine.yaml, label: SGD cos, lr: {tune: [0.005, 0.01]}}\n  - {name: prodigy"))
    _fake_race(suite, suite.summaries, zenith_gain=-3.0)
    for seed in suite.tuning.seeds:
        for lr in (0.005, 0.01):
            _fake_run(suite, suite.summaries, Run("sgd2", seed, "tune", lr), 30.0 + 100 * lr, lr, "SGD")
    _fake_run(suite, suite.summaries, Run("sgd2", 0), 40.0, 0.01, "SGD")  # seeds 1-5 missing
    hand = _rows(_results(suite, suite.summaries))["more AP than hand-made schedules at the same budget"]
    assert hand["verdict"] == verdicts.REFUTED and "vs SGD cos: incomplete" in hand["numbers"]


def test_weight_decay_the_test_cannot_see_is_not_tested(tmp_path):
    """At 1e-4 the decay shrinks the weights by well under 1% over these runs: no verdict."""
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries, wd=1e-4)
    row = _rows(_results(suite, suite.summaries))["compatible with weight decay"]
    assert row["verdict"] == verdicts.NOT_TESTABLE
    # ZENITH: wd 1e-4 x sum of lr_eff (0.004 x 100) / (1 - 0.9) -> 1 - exp(-4e-4) = 0.04%
    assert "ZENITH 0.04%" in row["numbers"] and "a test needs 5% (declared)" in row["numbers"]
    s = record.read_summary(suite.summaries, Run("zenith", 0))
    assert s["lr_integral"] == pytest.approx(0.4) and weight_claims.decay_shrink(s) == pytest.approx(1 - math.exp(-4e-4))


def test_flatness_is_compared_only_between_matched_final_lrs(tmp_path):
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries, eigen_gap=5.0, sgd_final_lr=0.0002)  # 20x apart, as in the earlier race
    row = _rows(_results(suite, suite.summaries))["flatter minima"]
    assert row["verdict"] == verdicts.UNDECIDED and "Confounded" in row["numbers"] and "20x ZENITH's" in row["numbers"]
    text = "\n".join(report_tables.flatness_lines(_results(suite, suite.summaries)))
    assert "| SGD | 0 | 25.0 | 2 | 0.01 | yes | 0.0002 | 19000 | 0.001 |" in text
    # an unsettled power iteration does not count
    s = record.read_summary(suite.summaries, Run("sgd", 1))
    s["sharpness"]["converged"] = False
    record.write_summary(suite.summaries, Run("sgd", 1), s)
    res = _results(suite, suite.summaries)
    assert any("SGD seed 1: flatness probe not settled" in line for line in report.problem_lines(res))


def test_skipped_steps_are_counted_per_run(tmp_path):
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries)
    _fake_run(suite, suite.summaries, Run("sgd", 2), 40.0, 0.005, "SGD", skipped=(3, 0))
    res = _results(suite, suite.summaries)
    table = "\n".join(report_tables.arm_table(res, ["zenith", "sgd"]))
    assert "| 3 / 0 |" in table and "| 0 / 0 |" in table


def test_the_probe_counts_skipped_iterations_across_sessions():
    """The trainer puts "nonfinite_losses" at every skipped iteration; the probe counts the puts,
    and a resumed run carries the earlier sessions' count in its checkpoint (the hook's state)."""
    from types import SimpleNamespace

    from zenith_det.race import probes

    from zenith_det.race import run_process as race_run
    from zenith_det.engine.events import EventStorage

    probe = probes.RaceProbe(10, 10, 5)
    probe.trainer = SimpleNamespace(storage=EventStorage())
    for k in (1, 2, 1):
        probe.trainer.storage.put_scalar("nonfinite_losses", k, smoothing_hint=False)
    assert probe.state_dict() == {"nonfinite_losses": 3}
    resumed = probes.RaceProbe(10, 10, 5)
    resumed.trainer = SimpleNamespace(storage=None)
    resumed.load_state_dict(probe.state_dict())
    resumed.trainer.storage = EventStorage()
    resumed.trainer.storage.put_scalar("nonfinite_losses", 1, smoothing_hint=False)
    assert resumed.nonfinite_losses == 4

    import torch

    class Counting:
        def skipped_steps(self):
            return torch.tensor(2)

    assert race_run.skipped_steps(SimpleNamespace(optimizer=Counting(), probe=resumed)) == {"nonfinite_loss": 4,
                                                                                             "nonfinite_grad": 2}
    assert race_run.skipped_steps(SimpleNamespace(optimizer=object(), probe=resumed))["nonfinite_grad"] is None


# ------------------------------------------------------------------------------ the report


@pytest.mark.slow
def test_report_is_generated_from_the_summaries_alone(tmp_path):
    pytest.importorskip("matplotlib")
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries, zenith_gain=3.0)
    assert not any(files for _, _, files in os.walk(suite.summaries + "_runs"))  # no run folders: only the summaries
    with open(os.path.join(suite.summaries, record.COSTS), "w") as f:
        json.dump({"rounds": 3, "block": 2, "threads": 1, "peer": "zenith",
                   "costs": {"zenith": {"step_seconds": [0.012, 0.011, 0.013], "iteration_seconds": [0.41, 0.40, 0.42]},
                             "sgd": {"step_seconds": [0.010, 0.010, 0.010], "iteration_seconds": [0.40, 0.41, 0.40]}}}, f)
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(suite.summaries) for f in fs if f.startswith("seed")]
    assert max(sizes) < 8000  # a few KB per run
    path = str(tmp_path / "docs" / "RESULTS.md")
    compare = load_tool("compare")
    assert compare.main(["--suite", suite.path, "--report", path, "--report-only", "--out", str(tmp_path / "nowhere")]) == 0
    text = open(path).read()
    order = ["## Verdict per claim", "## Runs missing, failed or stale", "## Pre-registration", "## Power",
             "## Learning rates chosen on the tuning seeds", "## Setup"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    assert "| more AP than hand-made schedules at the same budget |" in text and "**supported**" in text
    assert "None: every declared run has its summary" in text
    assert "- **Primary metric**: box AP (`bbox/AP`)" in text and "- **Alpha**: 0.05" in text
    assert "- **Equivalence margin, W**: ±2 box AP (TOST)." in text
    assert "| ZENITH | main | 6 | tuned: the best mean of 2 lrs (0.01, 0.02) on tuning seeds 100, 101 | 0.02 |" in text
    assert "| ZENITH eta0" not in text and "| ZENITH x2 | eta0 | 6 | 2 x the lr chosen for ZENITH | 0.04 |" in text
    assert "paired SD `variants`: 0.81 from the 95% interval [-1, +3] of 3 paired seeds" in text
    assert "| main | 1 | paired t | 2.00 (`main`) | 0.05 | 3 | 6 |" in text
    assert "| SGD | 0.005 | 42.0 ± 0.0 |  |  | **yes** (edge of the grid) |" in text
    assert "| ZENITH | ZENITH | 0.02 | 6/6 |" in text
    assert "BatchNorm at evaluation, every arm: recomputed (20 batches) at the evaluated weights." in text
    assert "1.20 [1.10, 1.30]" in text  # ZENITH's step cost against SGD's, round by round
    assert "**Decision: none wins beyond the noise: keep partial.**" in text
    assert "a test machine" in text and "abc1234" in text
    assert "--report-only --out" in text  # the command that rebuilds it
    assert "| ZENITH W60 | 60 | 6/6 |" in text
    for name in ("map_vs_time.png", "weight_decay_loss.png", "eta0_lr.png", "start_grad_norm.png"):
        assert (tmp_path / "docs" / "figures" / name).stat().st_size > 5000, name
        assert f"](figures/{name})" in text


# ------------------------------------------------------------------------------ the runner


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
