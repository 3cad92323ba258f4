"""What the benchmark scripts share: how they time a call, how they read a ratio out of
interleaved rounds, and the model whose parameters they measure on.

The scripts import it as a sibling (`from common import ...`): `python benchmarks/X.py`
puts this folder first on the import path, and tests load the scripts with
tests/conftest.py's load_benchmark, which does the same without touching sys.path.
"""
import contextlib
import statistics
import time

import torch
import torchvision


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` while measuring, and given back after (main() is
    also called in-process, by the tests)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def wall_seconds(fn, device) -> float:
    """Wall time of fn() from issue to completion: on CUDA the device is synchronized before
    and after, so what a call costs in launches counts as well as the kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def device_seconds(fn, device) -> float:
    """Time of fn() on the device: between two CUDA events on CUDA (the kernels' time, launches
    overlapping them), wall time on the CPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def ratio_with_block_spread(values, peer_values, blocks: int):
    """Median of `values` over that of `peer_values` (timings taken in interleaved rounds),
    and the (lowest, highest) of that ratio over `blocks` consecutive blocks of rounds:
    a difference inside that range is noise."""
    ratio = statistics.median(values) / statistics.median(peer_values)
    size = max(1, len(values) // blocks)
    per_block = [
        statistics.median(values[i:i + size]) / statistics.median(peer_values[i:i + size])
        for i in range(0, size * blocks, size)
        if values[i:i + size]
    ]
    return ratio, min(per_block), max(per_block)


def mask_rcnn_r50_fpn(image_size=None):
    """torchvision's maskrcnn_resnet50_fpn, untrained (44.45M trainable parameters); with
    `image_size`, its transform resizes every image to that size (min_size = max_size)."""
    kwargs = dict(min_size=image_size, max_size=image_size) if image_size else {}
    return torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
