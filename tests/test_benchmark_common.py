"""benchmarks/common.py, the statistics and timers the benchmark scripts share, and the scripts
that import it finding it beside them when run as `python benchmarks/X.py`."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, load_benchmark

common = load_benchmark("common")


def test_ratio_of_medians_with_its_spread_over_blocks_of_rounds():
    peer = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]  # a load change after round 4 hits both alike
    values = [1.1, 1.2, 1.3, 1.2, 2.6, 2.4, 2.5]
    ratio, low, high = common.ratio_with_block_spread(values, peer, blocks=2)
    assert ratio == pytest.approx(1.3 / 1.0)  # medians over all 7 rounds
    # blocks of 3 rounds (the 7th is left out): medians 1.2/1.0 and 2.4/2.0 -> 1.2 and 1.2
    assert (low, high) == (pytest.approx(1.2), pytest.approx(1.2))


@pytest.mark.parametrize("timer", ["wall_seconds", "device_seconds"])
def test_timers_call_once_and_return_seconds(timer):
    calls = []
    seconds = getattr(common, timer)(lambda: calls.append(sum(range(10_000))), torch.device("cpu"))
    assert calls == [sum(range(10_000))] and 0 < seconds < 5


@pytest.mark.slow
@pytest.mark.parametrize("script", ["benchmark_engine", "benchmark_grad_norm", "benchmark_optimizer"])
def test_scripts_importing_common_run_from_the_repo_root(script):
    """No sys.path edits: run as a script, a benchmark imports common.py from its own folder."""
    result = subprocess.run([sys.executable, os.path.join("benchmarks", f"{script}.py"), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}.py")
