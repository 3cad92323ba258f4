"""benchmarks/benchmark_loader.py runs end to end (no timing assertions)."""
import pytest

from conftest import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_benchmark_loader_smoke(tmp_path, capsys):
    tool = load_benchmark("benchmark_loader")
    results = tool.main(["--images", "4", "--rounds", "1", "--size", "96", "128", "--min-size", "64",
                         "--max-size", "96", "--data", str(tmp_path), "--profile", "2"])
    out = capsys.readouterr().out
    for row in ("ours ", "ours, PIL decode (before)", "peer ", "ours+resize", "peer+resize",
                "PIL uint8", "decode_jpeg float32 (read_image)", "largest pixel difference",
                "mask_rcnn_R_50_FPN_1x (0.261 s/iter = 7.7 images/s per GPU)", "keypoint_rcnn_R_50_FPN_1x",
                "cProfile of ours"):
        assert row in out, out
    assert set(results) == {"shapes", "keypoints"} and all(len(v) == 1 for s in results.values() for v in s.values())
