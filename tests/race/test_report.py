"""The report rebuilt from the summaries alone (race/report_page.py, race/report_tables.py)."""
import json
import os
import shutil

import pytest

from conftest import load_tool
from zenith_det.race import run_summary as record
from zenith_det.race import stats
from race_fixtures import (  # noqa: F401
    _load,
    _fake_race,
)

scipy_stats = pytest.importorskip("scipy.stats")


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
    for name in ("ap.png", "weight_decay_loss.png", "eta0_lr.png", "start_grad_norm.png"):
        assert (tmp_path / "docs" / "figures" / name).stat().st_size > 5000, name
        assert f"](figures/{name})" in text


def test_the_band_is_the_means_95_t_interval_over_the_seeds_at_each_iteration():
    from zenith_det.race.band_figures import mean_band

    seeds = [([10, 20], [1.0, 4.0]), ([10, 20], [3.0, 6.0]), ([10], [2.0])]
    xs, mean, low, high = mean_band(seeds)
    assert xs == [10, 20] and mean == pytest.approx([2.0, 5.0])
    # iteration 10: values 1, 3, 2 -> sd 1, n 3; iteration 20: values 4, 6 -> sd sqrt(2), n 2
    half = [stats.t975(2) * 1.0 / 3 ** 0.5, stats.t975(1) * 2 ** 0.5 / 2 ** 0.5]
    assert low == pytest.approx([m - h for m, h in zip(mean, half)])
    assert high == pytest.approx([m + h for m, h in zip(mean, half)])
    assert mean_band([([5], [7.0])]) == ([5], [7.0], [7.0], [7.0])  # one seed: no band


@pytest.mark.parametrize("tamper, says", [
    ("copy_to_another_seed", "says run 'zenith/seed0' but its place is run 'zenith/seed1'"),
    ("into_another_arm", "says run 'sgd/seed0' but its place is run 'zenith/seed0'"),
    ("claims_another_seed", "says seed 5 but its place is seed 0"),
    ("absurd_ap", "final bbox/AP is 1000000.0"),
    ("not_utf8", "cannot be read as JSON (UnicodeDecodeError)"),
    ("a_list", "holds a JSON list, not an object"),
    ("another_config", "is not the suite's"),
])
def test_a_summary_out_of_its_place_or_its_ranges_is_named_in_one_line(tmp_path, capsys, tamper, says):
    suite = _load(tmp_path)
    _fake_race(suite, suite.summaries, zenith_gain=3.0)
    folder = os.path.join(suite.summaries, "zenith")
    seed0, seed1 = os.path.join(folder, "seed0.json"), os.path.join(folder, "seed1.json")
    summary = json.load(open(seed0))
    if tamper == "copy_to_another_seed":
        shutil.copyfile(seed0, seed1)
    elif tamper == "into_another_arm":
        shutil.copyfile(os.path.join(suite.summaries, "sgd", "seed0.json"), seed0)
    elif tamper in ("claims_another_seed", "absurd_ap", "another_config", "a_list"):
        if tamper == "claims_another_seed":
            summary["seed"] = 5
        elif tamper == "absurd_ap":
            summary["final"]["bbox/AP"] = 1e6
        elif tamper == "another_config":
            summary["config"] = "configs/compare/sgd_multistep.yaml"
        else:
            summary = [summary]
        json.dump(summary, open(seed0, "w"))
    else:
        open(seed0, "wb").write(b"\xff\xfe not utf-8")
    code = load_tool("compare").main(["--suite", suite.path, "--report", str(tmp_path / "R.md"), "--report-only",
                                      "--out", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "R.md").exists()
