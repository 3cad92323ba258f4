"""Suite files and their pre-registration (race/suite_format.py, race/suite_loading.py)."""
import os
import re

import pytest

from conftest import load_tool
from zenith_det.race import runner as race
from zenith_det.race import report_page as report
from zenith_det.race import paired_runs as results
from zenith_det.errors import UserError
from race_fixtures import (  # noqa: F401
    PREREG,
    _suite_file,
    CONFIGS,
    SUITES,
)

scipy_stats = pytest.importorskip("scipy.stats")


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
