"""The race (zenith_det/analysis, tools/compare.py): suite files, the runner, the statistics,
the verdicts computed from runs, the report, the cost measurement, and one real run."""
import json
import math
import os
import sys

import pytest

from conftest import REPO, load_tool
from zenith_det.analysis import race, report, stats, verdicts
from zenith_det.analysis.metrics import load_metrics
from zenith_det.analysis.overhead import measure_iteration_costs, ratio_summary, within_noise
from zenith_det.errors import UserError

SUITES = [os.path.join(REPO, "configs", "compare", "suites", f"{name}.yaml") for name in ("cpu", "gpu")]


def _suite_file(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text.replace("CONFIGS", os.path.join(REPO, "configs", "compare")))
    return str(path)


FAKE_SUITE = """
title: fake race
seeds: [0, 1, 2]
reference: zenith
sharpness: [zenith, sgd]
arms:
  - {name: zenith, config: CONFIGS/zenith.yaml, label: ZENITH}
  - {name: sgd, config: CONFIGS/sgd_multistep.yaml, label: SGD}
  - {name: prodigy, config: CONFIGS/prodigy.yaml, label: Prodigy}
  - {name: zenith_wd0, config: CONFIGS/zenith.yaml, label: ZENITH wd0, group: weight decay, set: {SOLVER.WEIGHT_DECAY: 0.0}}
  - {name: sgd_wd0, config: CONFIGS/sgd_multistep.yaml, label: SGD wd0, group: weight decay, set: {SOLVER.WEIGHT_DECAY: 0.0}}
  - {name: zenith_lr0.08, config: CONFIGS/zenith.yaml, label: ZENITH 0.08, group: eta0, seeds: [0], set: {SOLVER.BASE_LR: 0.08}}
  - {name: sgd_lr0.08, config: CONFIGS/sgd_multistep.yaml, label: SGD 0.08, group: eta0, seeds: [0], set: {SOLVER.BASE_LR: 0.08}}
  - {name: zenith_w60, config: CONFIGS/zenith.yaml, label: ZENITH W60, group: W, seeds: [0], set: {SOLVER.ZENITH.WINDOW: 60}}
"""


def _fake_run(out, arm, seed, ap, optimizer, eigen=None):
    """What a finished race run leaves: metrics.json with two evaluations, race_stats.json."""
    vdir = os.path.join(out, arm, f"seed{seed}")
    os.makedirs(vdir, exist_ok=True)
    recs = [{"iteration": it, "total_loss": 2.0 / (1 + it / 20), "lr": 0.02, "time": 0.4, "grad_norm": 3.0,
             "wall_seconds": 0.4 * (it + 1), "lr_effective": 0.02, "zenith/multiplier": 0.5} for it in range(9, 100, 10)]
    recs += [{"iteration": 49, "bbox/AP": ap / 2, "bbox/AP50": ap}, {"iteration": 99, "bbox/AP": ap, "bbox/AP50": ap + 20,
                                                                       "segm/AP": ap + 1, "segm/AP50": ap + 21}]
    with open(os.path.join(vdir, "metrics.json"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in sorted(recs, key=lambda r: r["iteration"]))
    with open(os.path.join(vdir, race.STATS), "w") as f:
        json.dump({"status": "ok", "optimizer": optimizer, "iterations": 100, "window": 12, "step_seconds_median": 0.4,
                   "state_bytes_per_param": 4.0, "syncs_per_step": [0], "threads": 1, "device": "cpu"}, f)
    if eigen is not None:
        with open(os.path.join(vdir, race.SHARPNESS), "w") as f:
            json.dump({"eigenvalue": eigen, "estimates": [eigen], "lr": 0.01, "lr_implied": 380.0}, f)


def _fake_race(out, zenith_gain, wd_gain=1.0, lr_gap=(0.5, 10.0), w_gap=0.3, eigen_gap=5.0):
    """Runs whose numbers are chosen so each claim's verdict is known: ZENITH = SGD +
    zenith_gain (per seed, with seed noise shared by both), and so on."""
    noise = {0: 0.0, 1: 1.0, 2: -0.7}
    for s, n in noise.items():
        base = 40.0 + 3 * n
        _fake_run(out, "zenith", s, base + zenith_gain + 0.05 * s, "ZENITH", eigen=20.0 + s)
        _fake_run(out, "sgd", s, base - 0.05 * s, "SGD", eigen=20.0 + s + eigen_gap + 0.1 * s)
        _fake_run(out, "prodigy", s, base + zenith_gain - 0.5 + 0.1 * s, "PRODIGY")
        _fake_run(out, "zenith_wd0", s, base + zenith_gain - wd_gain + 0.02 * s, "ZENITH")
        _fake_run(out, "sgd_wd0", s, base - 0.5 * wd_gain - 0.03 * s, "SGD")
    _fake_run(out, "zenith_lr0.08", 0, 40.0 + zenith_gain - lr_gap[0], "ZENITH")
    _fake_run(out, "sgd_lr0.08", 0, 40.0 - lr_gap[1], "SGD")
    _fake_run(out, "zenith_w60", 0, 40.0 + zenith_gain - w_gap, "ZENITH")


def test_verdicts_follow_the_numbers(tmp_path):
    suite = race.load_suite(_suite_file(tmp_path, FAKE_SUITE))
    out = str(tmp_path / "ahead")
    _fake_race(out, zenith_gain=3.0)
    rows = {r["claim"]: r for r in verdicts.claim_rows(report.collect(suite, out)[0])}
    assert rows["more AP than hand-made schedules at the same budget"]["verdict"] == verdicts.SUPPORTED
    assert "vs SGD: AP +3.1 [+2.9, +3.3]" in rows["more AP than hand-made schedules at the same budget"]["numbers"]
    assert rows["more AP than automatic-LR methods"]["verdict"] == verdicts.SUPPORTED
    assert rows["insensitive to eta0"]["verdict"] == verdicts.SUPPORTED
    assert rows["insensitive to W"]["verdict"] == verdicts.SUPPORTED
    assert rows["compatible with weight decay"]["verdict"] == verdicts.SUPPORTED
    assert rows["flatter minima"]["verdict"] == verdicts.SUPPORTED

    out = str(tmp_path / "behind")
    _fake_race(out, zenith_gain=-3.0, wd_gain=-2.0, lr_gap=(12.0, 10.0), w_gap=9.0, eigen_gap=-5.0)
    rows = {r["claim"]: r for r in verdicts.claim_rows(report.collect(suite, out)[0])}
    for claim in ("more AP than hand-made schedules at the same budget", "insensitive to eta0", "insensitive to W",
                  "compatible with weight decay", "flatter minima"):
        assert rows[claim]["verdict"] == verdicts.REFUTED, claim


def test_seed_noise_decides_what_a_spread_means(tmp_path):
    """The pooled seed SD of the fake race is ~2.6 AP: a 0.5 AP spread over the lr grid is
    inside single-run noise (supported) only when the grid's spread is measured against it."""
    suite = race.load_suite(_suite_file(tmp_path, FAKE_SUITE))
    out = str(tmp_path / "r")
    _fake_race(out, zenith_gain=3.0, lr_gap=(0.5, 10.0))
    res = report.collect(suite, out)[0]
    assert res.seed_noise() == pytest.approx(
        stats.pooled_sd([list(res.values(a).values()) for a in res.finals if len(res.values(a)) > 1]))
    # a spread of ZENITH's is read against ZENITH's own seed noise
    sd = stats.Summary(list(res.values("zenith").values())).sd
    row = verdicts.spread_claim(res, "eta0", "SGD")
    assert f"ZENITH's seed SD {sd:.1f}" in row["numbers"]
    assert stats.single_run_noise(sd) > 0.5 and row["verdict"] == verdicts.SUPPORTED  # a 0.5 AP spread
    out = str(tmp_path / "wide")
    _fake_race(out, zenith_gain=3.0, lr_gap=(2 * stats.single_run_noise(sd), 1.0))
    assert verdicts.spread_claim(report.collect(suite, out)[0], "eta0", "SGD")["verdict"] == verdicts.REFUTED


def test_a_diverged_grid_point_counts_as_the_worst_a_setting_can_do(tmp_path):
    """SGD diverging at a large lr is its sensitivity at its plainest: the run left no model,
    so the grid counts it as 0 AP and says so, rather than dropping it."""
    suite = race.load_suite(_suite_file(tmp_path, FAKE_SUITE))
    out = str(tmp_path / "r")
    _fake_race(out, zenith_gain=0.0, lr_gap=(8.0, 1.0))
    vdir = os.path.join(out, "sgd_lr0.08", "seed0")
    for name in os.listdir(vdir):
        os.remove(os.path.join(vdir, name))
    with open(os.path.join(vdir, race.FAILED), "w") as f:
        json.dump({"status": "diverged", "iterations": 42, "optimizer": "SGD", "base_lr": 0.08}, f)
    res = report.collect(suite, out)[0]
    row = verdicts.spread_claim(res, "eta0", "SGD")
    assert "SGD's range 40.0 AP" in row["numbers"] and "SGD 0.08 diverged: counted as 0 AP" in row["numbers"]
    # ZENITH's 8 AP range is beyond its noise but narrower than SGD's: neither insensitive nor as sensitive
    assert row["verdict"] == verdicts.UNDECIDED
    assert "| SGD 0.08 | SGD | 0.08 | diverged at iteration 42 |" in "\n".join(
        report.grid_lines(res, report.collect(suite, out)[1], "eta0", "lr", "SOLVER.BASE_LR"))


def test_statistics_against_known_values():
    s = stats.Summary([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.sd == 1.0
    lo, hi = s.ci95()
    assert hi - 2.0 == pytest.approx(4.303 / math.sqrt(3))
    d = stats.paired_differences({0: 5.0, 1: 6.0, 2: 9.0, 3: 1.0}, {0: 4.0, 1: 4.0, 2: 6.0})
    assert d.values == [1.0, 2.0, 3.0]
    assert stats.sign_of(d) == 0  # 2 +- 4.303/sqrt(3): three seeds cannot tell it from 0
    assert stats.sign_of(stats.Summary([3.0, 3.1, 2.9])) == 1 and stats.sign_of(stats.Summary([-3.0, -3.1, -2.9])) == -1
    assert stats.Summary([2.0]).ci95() == (-math.inf, math.inf)
    assert stats.pooled_sd([[1.0, 3.0], [10.0, 12.0, 14.0], [7.0]]) == pytest.approx(math.sqrt((2 + 8) / 3))


def test_report_is_generated_from_the_runs(tmp_path):
    pytest.importorskip("matplotlib")
    suite = race.load_suite(_suite_file(tmp_path, FAKE_SUITE))
    out = str(tmp_path / "runs")
    _fake_race(out, zenith_gain=3.0)
    with open(os.path.join(out, race.COSTS), "w") as f:
        json.dump({"rounds": 3, "block": 2, "threads": 1, "peer": "zenith",
                   "costs": {"zenith": {"step_seconds": [0.012, 0.011, 0.013], "iteration_seconds": [0.41, 0.40, 0.42]},
                             "sgd": {"step_seconds": [0.010, 0.010, 0.010], "iteration_seconds": [0.40, 0.41, 0.40]}}}, f)
    path = str(tmp_path / "docs" / "RESULTS.md")
    report.write_report(suite, out, path, "python tools/compare.py --suite X")
    text = open(path).read()
    assert text.index("## Verdict per claim") < text.index("## Setup")
    assert "| more AP than hand-made schedules at the same budget |" in text and "**supported**" in text
    assert "| ZENITH | ZENITH | 3 | 43.4 ± 2.5 |" in text  # mean ± SD over the three seeds
    assert "1.20 [1.10, 1.30]" in text  # ZENITH's step cost against SGD's, round by round
    assert "ZENITH's whole iteration costs 1.02x SGD's [0.98, 1.05], within the noise" in text
    for name in ("map_vs_time.png", "weight_decay_loss.png", "eta0_lr.png"):
        assert (tmp_path / "docs" / "figures" / name).stat().st_size > 5000, name
        assert f"](figures/{name})" in text


@pytest.mark.parametrize("text, field", [
    ("arms: []", "arms"),
    ("arms: [{name: a}]", "arms[0]"),
    ("arms: [{name: a, config: nowhere.yaml}]", "does not exist"),
    ("seeds: [0]\narms: [{name: a, config: CONFIGS/zenith.yaml, seeds: [1]}]", "not among the suite's seeds"),
    ("seeds: [-1]\narms: [{name: a, config: CONFIGS/zenith.yaml}]", "seeds must be"),
    ("arms: [{name: a, config: CONFIGS/zenith.yaml}, {name: a, config: CONFIGS/zenith.yaml}]", "unique"),
    ("reference: b\narms: [{name: a, config: CONFIGS/zenith.yaml}]", "reference 'b'"),
    ("mode: fast\narms: [{name: a, config: CONFIGS/zenith.yaml}]", "mode 'fast'"),
    ("mode: wall_clock\narms: [{name: a, config: CONFIGS/zenith.yaml}]", "budget_hours"),
    ("arms: [{name: a/b, config: CONFIGS/zenith.yaml}]", "names a folder"),
    ("arms: [{name: a, config: CONFIGS/zenith.yaml}]\nsharpness: [z]", "sharpness"),
    ("arms: [", "not a YAML"),
])
def test_a_bad_suite_file_is_one_line_naming_the_field(tmp_path, text, field):
    path = _suite_file(tmp_path, text)
    with pytest.raises(UserError, match=field.replace("[", r"\[").replace("]", r"\]")) as e:
        race.load_suite(path)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_compare_exits_2_on_a_bad_suite(tmp_path, capsys):
    compare = load_tool("compare")
    assert compare.main(["--suite", _suite_file(tmp_path, "arms: []"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "suite.yaml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", SUITES)
def test_the_shipped_suites_load_and_every_run_builds_a_config(path):
    from zenith_det.config import load_config

    suite = race.load_suite(path)
    runs = suite.runs()
    assert len({(a.name, s) for a, s in runs}) == len(runs)
    # seed-major: every arm's seed 0 before any seed 1
    first_seed1 = next(i for i, (_, s) in enumerate(runs) if s == 1)
    assert all(s == 0 for _, s in runs[:first_seed1])
    for arm in suite.arms:
        opts = race.run_options(suite, arm, arm.seeds[0], "out")
        cfg = load_config(arm.config, opts + ["MODEL.DEVICE", "cpu"])  # the GPU suite's cuda, checked below
        assert cfg.SOLVER.MAX_TIME_HOURS == 0.0 and cfg.SEED == arm.seeds[0]
        assert cfg.OUTPUT_DIR == os.path.join("out", arm.name, f"seed{arm.seeds[0]}")
        if cfg.SOLVER.OPTIMIZER == "ZENITH":  # every run is at least 10x the smallest window
            assert cfg.SOLVER.MAX_ITER >= 10 * 5
    main = [a for a in suite.arms if a.group == "main"]
    assert all(a.seeds == suite.seeds and len(a.seeds) >= 3 for a in main) and len(main) >= 13
    assert opts[opts.index("MODEL.DEVICE") + 1] == "cuda" if "gpu" in path else "MODEL.DEVICE" not in opts


def test_runner_skips_finished_and_failed_runs_and_records_a_silent_failure(tmp_path, monkeypatch):
    suite = race.load_suite(_suite_file(tmp_path, """
seeds: [0, 1]
arms:
  - {name: zenith, config: CONFIGS/zenith.yaml}
  - {name: dog, config: CONFIGS/dog.yaml, seeds: [0]}
"""))
    out = str(tmp_path / "runs")
    _fake_run(out, "zenith", 0, 40.0, "ZENITH")
    os.makedirs(os.path.join(out, "dog", "seed0"))
    with open(os.path.join(out, "dog", "seed0", race.FAILED), "w") as f:
        json.dump({"status": "diverged"}, f)
    started = []

    def fake_command(config, opts, resume):
        started.append(opts)
        return [sys.executable, "-c", "import sys; sys.exit(1)"]

    monkeypatch.setattr(race, "child_command", fake_command)
    codes = race.run_suite(suite, out, jobs=2, log=lambda *_: None)
    assert len(started) == 1 and dict(zip(started[0][::2], started[0][1::2]))["SEED"] == "1"
    assert list(codes.values()) == [1]
    assert json.load(open(os.path.join(out, "zenith", "seed1", race.FAILED)))["returncode"] == 1
    race.run_suite(suite, out, jobs=2, log=lambda *_: None)
    assert len(started) == 1  # failed runs wait for --retry-failed


def test_sigterm_stops_the_race_and_each_run_checkpoints(tmp_path):
    """A scheduler's SIGTERM to the race (even one started with SIGINT ignored, as a shell's
    background job is) reaches every running run, which checkpoints and exits 75; the race
    returns with their codes instead of leaving orphans behind."""
    suite_path = _suite_file(tmp_path, "seeds: [0, 1]\narms: [{name: zenith, config: CONFIGS/zenith.yaml}]")
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
        "from zenith_det.analysis import race\n"
        f"race.child_command = lambda config, opts, resume: [sys.executable, {str(child)!r}, opts[opts.index('OUTPUT_DIR') + 1]]\n"
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
    configs = {name: load_config(os.path.join(REPO, "configs", "compare", f"{name}.yaml"), opts)
               for name in ("zenith", "sgd_multistep", "dog", "alig", "schedulefree_sgd")}
    costs = measure_iteration_costs(configs, rounds=2, block=1)
    for c in costs.values():
        assert len(c["step_seconds"]) == 2 and all(0 < s < i for s, i in zip(c["step_seconds"], c["iteration_seconds"]))


@pytest.mark.slow
def test_one_real_run_writes_stats_and_probe_metrics(datasets_root, tmp_path, monkeypatch):
    from zenith_det.analysis import probes, race_run

    out = str(tmp_path / "child")
    opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.ZENITH.WINDOW", "5", "DATASETS.TEST", "()", "LOG_PERIOD", "2",
            "OUTPUT_DIR", out]
    monkeypatch.setattr(race_run, "SYNC_START", 2)
    assert probes.SYNC_STEPS == 5
    assert race_run.train_one(os.path.join(REPO, "configs", "compare", "zenith.yaml"), opts, resume=False) == 0
    st = json.load(open(os.path.join(out, race.STATS)))
    assert st["iterations"] == 6 and st["optimizer"] == "ZENITH" and st["seed"] >= 0
    assert st["syncs_per_step"] == [0, 0, 0, 0]  # ZENITH's step never syncs
    assert st["state_bytes_per_param"] == pytest.approx(4.0, abs=0.05)
    recs = load_metrics(out)
    assert any("wall_seconds" in r for r in recs) and any("lr_effective" in r for r in recs)

