"""The verdicts computed from runs (race/verdict_rules.py, race/weight_claims.py, race/claims_table.py)."""
import math

import pytest

from zenith_det.race import run_summary as record
from zenith_det.race import report_page as report
from zenith_det.race import report_tables
from zenith_det.race import paired_runs as results
from zenith_det.race import stats
from zenith_det.race import verdict_rules as verdicts
from zenith_det.race import weight_claims
from zenith_det.race.suite_format import Run
from race_fixtures import (  # noqa: F401
    FAKE_SUITE,
    _load,
    CONFIGS,
    NOISE,
    _fake_race,
    _fake_run,
    _jitter,
    _results,
    _rows,
)

scipy_stats = pytest.importorskip("scipy.stats")


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
    def w_row(folder, w_gap, *suite_text):
        folder.mkdir(exist_ok=True)
        suite = _load(folder, *suite_text)
        _fake_race(suite, suite.summaries, w_gap=w_gap)
        return _rows(_results(suite, suite.summaries))["insensitive to W"]

    row = w_row(tmp_path, 0.0, FAKE_SUITE.replace("label: ZENITH W60, group: W,", "label: ZENITH W60, group: W, seeds: 1,"))
    assert row["verdict"] == verdicts.UNDECIDED and "(n=1)" in row["numbers"]
    row = w_row(tmp_path / "six", 0.0)
    assert row["verdict"] == verdicts.SUPPORTED and "margin ±2 box AP (declared)" in row["numbers"]
    # exactly at the 2 AP margin: neither equivalent nor beyond it
    assert w_row(tmp_path / "edge", 2.0)["verdict"] == verdicts.UNDECIDED


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
    assert row["verdict"] == verdicts.UNDECIDED and "Confounded" in row["numbers"]
    assert "1/20 of ZENITH's" in row["numbers"]  # SGD's final lr, the right way round
    text = "\n".join(report_tables.flatness_lines(_results(suite, suite.summaries)))
    assert "| SGD | 0 | 25.0 | -2.5 | 60 | 0.02 | yes | 0.0002 | 19000 | 0.001 |" in text
    # an unsettled probe does not count
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
