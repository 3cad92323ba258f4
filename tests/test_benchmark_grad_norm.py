"""benchmarks/benchmark_grad_norm.py runs end to end (no timing assertions)."""
import pytest
import torch

from conftest import load_benchmark


def test_bucket_views_fill_25mib_buckets_from_the_last_parameter_like_ddp():
    tool = load_benchmark("benchmark_grad_norm")
    shapes = [torch.Size(s) for s in ([7000, 1000], [3000, 1000], [10], [4000, 1000], [5, 5])]
    views, buckets = tool.bucket_views(shapes, torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == shapes
    storage = [v.untyped_storage().data_ptr() for v in views]
    # [4], [3], [2], [1] fill the first bucket past 25 MiB (28 MB); [0] starts the next.
    assert len(set(storage[1:])) == 1 and storage[0] != storage[1]
    for later, earlier in zip(views[1:4], views[2:5]):
        assert later.data_ptr() == earlier.data_ptr() + earlier.nbytes
    # Read as runs, the buckets give the norm of the gradients.
    exact = sum(float(v.double().pow(2).sum()) for v in views) ** 0.5
    assert tool.norm_of_runs(buckets).item() == pytest.approx(exact, rel=1e-6)


@pytest.mark.slow
def test_benchmark_grad_norm_smoke(capsys):
    tool = load_benchmark("benchmark_grad_norm")
    tool.main(["--rounds", "1", "--blocks", "1", "--hook-reps", "1", "--image-size", "96", "--no-compile"])
    out = capsys.readouterr().out
    for row in ("SGD(fused) step", "shipped, per tensor", "shipped, DDP bucket views", "buckets as runs", "floor: one read",
                "in backward (hooks, own time)"):
        assert row in out, out
