#!/usr/bin/env python
"""The ways to take ZENITH's global gradient norm, measured against each other.

On the parameter set of torchvision's maskrcnn_resnet50_fpn (44.45M parameters),
each way's time is a fraction of one fused SGD step on the same parameters
(torch.optim.SGD(fused=True), momentum 0.9, weight decay 1e-4): Zenith's step is
that step plus its norm, so 1 + fraction is the Zenith/SGD ratio the way allows.

  shipped, per tensor        global_grad_norm on gradients allocated one by one
  shipped, DDP bucket views  the same function on gradients that are views into
                             25 MiB buckets, as DDP leaves them with
                             gradient_as_bucket_view=True (the trainer's setting)
  buckets as runs            each bucket read as one tensor instead of its views:
                             on the CPU a dot per 2^18 elements (one dot over a
                             whole bucket loses precision: its float32 lanes sum
                             layers of very different magnitudes), elsewhere one
                             _foreach_norm over the buckets
  torch.compile              inductor's fused sum of squares over the same list
  floor: one read            torch.dot over one flat buffer of all 44.45M values:
                             what a norm in its own pass must read; no way that
                             reads the gradients after backward can cost less
  in backward (hooks)        a dot per parameter in register_post_accumulate_grad_hook,
                             while the gradient is fresh; measured as the hooks'
                             own time summed over a real backward (a lower bound
                             of what they add to it), at --image-size

Rounds are interleaved, medians reported, and "spread" is the lowest and highest
ratio over --blocks blocks of rounds. On CUDA each way is timed from issue to
completion (synchronized before and after), since issuing is what a norm over
many tensors costs there; the hooks way runs on the CPU only.

    python benchmarks/benchmark_grad_norm.py
    python benchmarks/benchmark_grad_norm.py --device cuda --no-compile
"""
import argparse
import statistics
import time

import torch

from zenith_det.solver import global_grad_norm
from zenith_det.utils import torch_internals

from common import mask_rcnn_r50_fpn, ratio_with_block_spread, torch_threads, wall_seconds

BUCKET_BYTES = 25 * 1024 * 1024  # DDP's default bucket_cap_mb
RUN_PIECE = 1 << 18


def bucket_views(shapes, gen, device="cpu"):
    """Gradients as views into buckets of about BUCKET_BYTES, filled in reverse order as DDP does,
    and the buckets."""
    views, bucket, size = [None] * len(shapes), [], 0
    groups = []
    for i in reversed(range(len(shapes))):
        bucket.append(i)
        size += shapes[i].numel() * 4
        if size >= BUCKET_BYTES:
            groups.append(bucket)
            bucket, size = [], 0
    if bucket:
        groups.append(bucket)
    buckets = []
    for group in groups:
        flat = torch.randn(sum(shapes[i].numel() for i in group), generator=gen).to(device)
        buckets.append(flat)
        offset = 0
        for i in group:
            views[i] = flat[offset:offset + shapes[i].numel()].view(shapes[i])
            offset += shapes[i].numel()
    return views, buckets


def norm_of_runs(buckets):
    """The norm with each bucket read as one run (in pieces on the CPU)."""
    if buckets[0].device.type == "cpu":
        squares = torch.stack([torch.dot(piece, piece) for b in buckets for piece in b.split(RUN_PIECE)])
        return squares.sum().sqrt()
    return torch.linalg.vector_norm(torch.stack(torch_internals.foreach_norm(buckets)))


def compiled_norm():
    def sum_of_squares(grads):
        return torch.stack([g.float().pow(2).sum() for g in grads]).sum().sqrt()

    return torch.compile(sum_of_squares, dynamic=False)


def hooks_seconds(image_size, reps):
    """Median over `reps` backward passes of the summed time of per-parameter norm hooks."""
    model = mask_rcnn_r50_fpn(image_size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    squares = torch.zeros(len(params))
    spent = [0.0]

    def make_hook(i):
        def hook(p):
            t0 = time.perf_counter()
            g = p.grad
            squares[i] = torch.dot(g.view(-1), g.view(-1)) if g.is_contiguous() else g.pow(2).sum()
            spent[0] += time.perf_counter() - t0
        return hook

    for i, p in enumerate(params):
        p.register_post_accumulate_grad_hook(make_hook(i))
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, image_size, image_size, generator=gen) for _ in range(2)]
    box = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9]]) * image_size
    masks = torch.zeros(2, image_size, image_size, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, box.int().tolist()):
        m[y0:y1, x0:x1] = 1
    targets = [{"boxes": box, "labels": torch.tensor([1, 2]), "masks": masks} for _ in images]
    times = []
    for _ in range(reps + 1):  # the first one warms up
        model.zero_grad(set_to_none=True)
        spent[0] = 0.0
        sum(model(images, targets).values()).backward()
        times.append(spent[0])
        exact = sum(float(p.grad.double().pow(2).sum()) for p in params) ** 0.5
        assert abs(float(squares.sum().sqrt()) - exact) <= 1e-4 * exact, "the hooks missed a gradient"
    return statistics.median(times[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (this project's machines have 2)")
    parser.add_argument("--image-size", type=int, default=320, help="for the backward the hooks run in")
    parser.add_argument("--hook-reps", type=int, default=3, help="0 skips the in-backward way (CPU only)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip torch.compile (its first compile took 26 s on 2 cores)")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        device = torch.device(args.device)

        shapes = [p.shape for p in mask_rcnn_r50_fpn().parameters() if p.requires_grad]
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        separate = [p.grad for p in params]
        views, buckets = bucket_views(shapes, gen, device)
        flat = torch.randn(sum(s.numel() for s in shapes), generator=gen).to(device)
        sgd = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4, fused=True)
        sgd.step()

        ways = {
            "SGD(fused) step": sgd.step,
            "shipped, per tensor": lambda: global_grad_norm(separate, device),
            "shipped, DDP bucket views": lambda: global_grad_norm(views, device),
            "buckets as runs": lambda: norm_of_runs(buckets),
            "floor: one read": lambda: torch.dot(flat, flat),
        }
        if not args.no_compile:
            compiled = compiled_norm()
            t0 = time.perf_counter()
            compiled(separate)
            print(f"torch.compile: compiled in {time.perf_counter() - t0:.0f} s")
            ways["torch.compile"] = lambda: compiled(separate)
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                times[name].append(wall_seconds(way, device))

        step = statistics.median(times["SGD(fused) step"])
        print(f"device={device} threads={args.threads} params={sum(s.numel() for s in shapes) / 1e6:.2f}M rounds={args.rounds}")
        print(f"{'way':30s} {'ms':>8s} {'/SGD step':>10s} {'spread':>13s}")
        for name, t in times.items():
            ratio, low, high = ratio_with_block_spread(t, times["SGD(fused) step"], args.blocks)
            print(f"{name:30s} {statistics.median(t) * 1e3:8.2f} {ratio:10.3f} {low:6.3f}-{high:6.3f}")
        if args.hook_reps > 0 and device.type == "cpu":
            hooks = hooks_seconds(args.image_size, args.hook_reps)
            print(f"{'in backward (hooks, own time)':30s} {hooks * 1e3:8.2f} {hooks / step:10.3f}   (one backward at "
                  f"{args.image_size}px, 2 images; against the step's median above)")


if __name__ == "__main__":
    main()
