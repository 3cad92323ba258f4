#!/usr/bin/env python
"""Step cost of Zenith against torch SGD (foreach and fused), and ZenithScheduler on AdamW.

One process, the parameter set of torchvision's maskrcnn_resnet50_fpn (44.45M
parameters), random gradients, the SGD rows once per --weight-decay value. Steps
are interleaved round-robin and the median of each is reported, so drift in
machine load hits every optimizer alike. Each row's ratio is to its named peer
(SGD(fused) with the same weight decay; AdamW(fused) for the AdamW rows), and
"spread" is the lowest and highest ratio over --blocks consecutive blocks of
rounds: a difference inside that range is noise. On CUDA the steps are timed
with CUDA events. The "floor" row times one read of every gradient (a dot over
one flat buffer of their size): a norm taken in its own pass reads at least
that, so Zenith/SGD(fused) cannot fall below 1 + its ratio on the machine.

    python benchmarks/benchmark_optimizer.py                # CPU, weight decay 1e-4 and 0
    python benchmarks/benchmark_optimizer.py --device cuda  # GPU, also checks no sync
"""
import argparse
import statistics

import torch

from zenith_det import Zenith, ZenithScheduler
from zenith_det.solver import NormHistory, global_grad_norm

from common import device_seconds, mask_rcnn_r50_fpn, ratio_with_block_spread


def detection_params(device):
    return [p.detach().to(device) for p in mask_rcnn_r50_fpn().parameters() if p.requires_grad]


def make_optimizers(template, device, weight_decays):
    """{row name: (optimizer, peer row name)}, and the ZenithScheduler."""
    def clone():
        params = [torch.nn.Parameter(p.clone()) for p in template]
        for p in params:
            p.grad = torch.randn_like(p)
        return params

    opts = {}
    for wd in weight_decays:
        hp = dict(lr=0.02, momentum=0.9, weight_decay=wd)
        peer = f"SGD(fused) wd={wd:g}"
        opts[f"SGD(foreach) wd={wd:g}"] = (torch.optim.SGD(clone(), foreach=True, **hp), peer)
        opts[peer] = (torch.optim.SGD(clone(), fused=True, **hp), peer)
        opts[f"Zenith wd={wd:g}"] = (Zenith(clone(), window=500, **hp), peer)
    opts["AdamW(fused)"] = (torch.optim.AdamW(clone(), lr=1e-4, weight_decay=1e-4, fused=True), "AdamW(fused)")
    adamw = torch.optim.AdamW(clone(), lr=1e-4, weight_decay=1e-4, fused=True)
    opts["AdamW(fused)+ZenithScheduler"] = (adamw, "AdamW(fused)")
    scheduler = ZenithScheduler(adamw, window=500)
    return opts, scheduler


def state_bytes(opt):
    """Bytes of per-parameter optimizer state (momentum buffers, Adam moments, ...)."""
    total = 0
    for state in opt.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return total


def global_state_bytes(history):
    """Bytes of state that does not grow with the model: ZENITH's window and scalars."""
    if history is None:
        return 0
    return sum(v.numel() * v.element_size() for v in history.state_dict().values() if torch.is_tensor(v))


def forward_backward_seconds(device, reps):
    """One training forward+backward of Mask R-CNN R50-FPN on a 2x3x512x512 batch."""
    model = mask_rcnn_r50_fpn(image_size=512).to(device)
    model.train()
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 512, 512, generator=gen).to(device) for _ in range(2)]
    targets = []
    for _ in range(2):
        masks = torch.zeros(3, 512, 512, dtype=torch.uint8)
        boxes = torch.tensor([[40, 60, 200, 220], [250, 100, 480, 300], [100, 300, 300, 500]], dtype=torch.float32)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2, 3]).to(device), "masks": masks.to(device)})
    times = []
    for _ in range(reps + 1):  # the first one warms up
        model.zero_grad(set_to_none=True)
        times.append(device_seconds(lambda: sum(model(images, targets).values()).backward(), device))
    return statistics.median(times[1:])


def check_no_sync(opt, device):
    if device.type != "cuda":
        return "n/a on CPU (tests/test_zenith.py proves it there)"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "none (torch.cuda.set_sync_debug_mode('error') passed)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=5, help="the spread of a ratio is taken over this many blocks of rounds")
    parser.add_argument("--weight-decay", type=float, nargs="+", default=[1e-4, 0.0], help="one set of SGD rows each")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (this project's machines have 2)")
    parser.add_argument("--fwd-bwd-reps", type=int, default=2, help="0 skips the forward+backward measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    template = detection_params(device)
    n_params = sum(p.numel() for p in template)
    opts, scheduler = make_optimizers(template, device, args.weight_decay)
    del template
    for opt, _ in opts.values():  # first steps allocate state
        opt.step()
    steps = {name: opt.step for name, (opt, _) in opts.items()}
    peers = {name: peer for name, (_, peer) in opts.items()}
    # Zenith's two additions to a fused SGD step, timed alone.
    first_zenith = next(opt for opt, _ in opts.values() if isinstance(opt, Zenith))
    zenith_grads = [p.grad for g in first_zenith.param_groups for p in g["params"]]
    steps["  part: global grad norm"] = lambda: global_grad_norm(zenith_grads, device)
    part_history = NormHistory(500, device)
    steps["  part: NormHistory.update"] = lambda: part_history.update(torch.ones((), device=device))
    # What any norm taken in its own pass must read: every gradient once, here as one dot
    # over one flat buffer of the same size (the fastest read; benchmark_grad_norm.py
    # compares the ways).
    one_buffer = torch.randn(sum(g.numel() for g in zenith_grads), device=device)
    steps["  floor: one read of the grads"] = lambda: torch.dot(one_buffer, one_buffer)
    for name in steps:
        peers.setdefault(name, f"SGD(fused) wd={args.weight_decay[0]:g}")
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(device_seconds(step, device))
    med = {name: statistics.median(t) for name, t in times.items()}
    sync = check_no_sync(first_zenith, device)
    fwd_bwd = forward_backward_seconds(device, args.fwd_bwd_reps) if args.fwd_bwd_reps > 0 else None

    sgd_state = state_bytes(opts[f"SGD(foreach) wd={args.weight_decay[0]:g}"][0])
    adam_state = state_bytes(opts["AdamW(fused)"][0])
    print(f"device={device} threads={args.threads} params={n_params / 1e6:.2f}M rounds={args.rounds} blocks={args.blocks}")
    header = f"{'optimizer':32s} {'step ms':>9s} {'peer':>18s} {'/peer':>7s} {'spread':>13s} {'extra B/param':>14s} {'global B':>9s}"
    if fwd_bwd:
        header += f" {'% of fwd+bwd':>13s}"
    print(header)
    for name in steps:
        ratio, low, high = ratio_with_block_spread(times[name], times[peers[name]], args.blocks)
        row = f"{name:32s} {med[name] * 1e3:9.2f} {peers[name]:>18s} {ratio:7.3f} {low:6.3f}-{high:6.3f}"
        if name in opts:
            opt = opts[name][0]
            extra = (state_bytes(opt) - (adam_state if name.startswith("AdamW") else sgd_state)) / n_params
            history = opt._history if isinstance(opt, Zenith) else scheduler.history if "Zenith" in name else None
            row += f" {extra:14.3f} {global_state_bytes(history):9d}"
            if fwd_bwd:
                row += f" {100 * med[name] / fwd_bwd:12.2f}%"
        print(row)
    if fwd_bwd:
        print(f"forward+backward (2x3x512x512, min_size=max_size=512): {fwd_bwd * 1e3:.0f} ms")
        for wd in args.weight_decay:
            zen, sgd = med[f"Zenith wd={wd:g}"], med[f"SGD(fused) wd={wd:g}"]
            print(f"Zenith overhead over fused SGD per iteration, wd={wd:g}: {100 * (zen - sgd) / (fwd_bwd + sgd):.3f}% (paper: 1.3%)")
        adam_extra = med["AdamW(fused)+ZenithScheduler"] - med["AdamW(fused)"]
        print(f"ZenithScheduler overhead per AdamW iteration: {100 * adam_extra / (fwd_bwd + med['AdamW(fused)']):.3f}%")
    floor_row = "  floor: one read of the grads"
    floor, _, _ = ratio_with_block_spread(times[floor_row], times[peers[floor_row]], args.blocks)
    print(f"floor for Zenith/SGD(fused) on this machine (a fused step plus one read of the grads): {1 + floor:.3f}")
    print(f"host syncs in Zenith.step(): {sync}")


if __name__ == "__main__":
    main()
