"""The lr-tuning stage and its edge rule (race/runner.py, race/paired_runs.py)."""
import os

import pytest

from zenith_det.race import runner as race
from zenith_det.race import run_summary as record
from zenith_det.race import report_page as report
from zenith_det.race import report_tables
from zenith_det.race import verdict_rules as verdicts
from zenith_det.race.suite_format import Run
from race_fixtures import (  # noqa: F401
    FAKE_SUITE,
    _load,
    _fake_race,
    _fake_run,
    _results,
    _rows,
)

scipy_stats = pytest.importorskip("scipy.stats")


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
