"""benchmarks/benchmark_predictor.py runs end to end and reports its three ratios (no timing assertions)."""
import pytest

from conftest import load_benchmark


@pytest.mark.slow
def test_benchmark_predictor_reports_its_ratios(datasets_root, capsys):
    ratios = load_benchmark("benchmark_predictor").main(["--count", "2", "--rounds", "2", "--blocks", "1",
                                                         "--batch-size", "2"])
    out = capsys.readouterr().out
    assert set(ratios) == {"Predictor, one by one", "predict_batch(2)", "ONNX Runtime, decoded"}
    for row in ("bare torchvision", "÷ bare torchvision", "÷ Predictor, one by one", "÷ eager, decoded"):
        assert row in out, out
