#!/usr/bin/env python
"""Our Trainer against a bare torchvision-style loop: same model, data and optimizer, one process.

Both loops run the synthetic Mask R-CNN config for the same iterations, in
alternating blocks (A B A B ...), so drift in machine load hits both alike. The
ratio of median block times is the engine's overhead: hooks, metrics, the loss
check. Checkpointing and evaluation are off in both, since the bare loop has none.

    python tools/benchmark_engine.py [--iters 20] [--blocks 4] [KEY VALUE ...]
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

from zenith_det.config import load_config
from zenith_det.data import build_detection_train_loader
from zenith_det.engine import Trainer, default_setup


class BareLoop:
    """torchvision references/detection/engine.py's train_one_epoch, stripped to the step."""

    def __init__(self, model, optimizer, scheduler, data_loader):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.data = iter(data_loader)
        self.device = next(model.parameters()).device

    def run(self, iters):
        for _ in range(iters):
            images, targets = next(self.data)
            images = [img.to(self.device) for img in images]
            targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            loss_dict = self.model(images, targets)
            losses = sum(loss_dict.values())
            self.optimizer.zero_grad()
            losses.backward()
            self.optimizer.step()
            self.scheduler.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic/mask_rcnn_zenith.yaml")
    parser.add_argument("--iters", type=int, default=20, help="iterations per block")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per loop")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bench_engine_")
    total = args.iters * args.blocks + args.iters
    cfg = load_config(args.config, [
        "OUTPUT_DIR", out, "SOLVER.MAX_ITER", str(10 * total), "SOLVER.CHECKPOINT_PERIOD", "0",
        "SOLVER.MAX_TIME_HOURS", "0", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", *args.opts,
    ])
    default_setup(cfg, resume=False)
    ours = Trainer(cfg)
    ours.data_loader = build_detection_train_loader(cfg)
    # The bare loop gets its own model, optimizer and loader built the same way.
    twin = Trainer(cfg)
    bare = BareLoop(twin.model, twin.optimizer, twin.scheduler, build_detection_train_loader(cfg))

    # Our trainer runs block by block, every hook included; hooks see one continuing run.
    state = {"next": 0}

    def ours_block(iters):
        _train_range(ours, state["next"], state["next"] + iters)
        state["next"] += iters

    ours_block(args.iters)  # warm up both
    bare.run(args.iters)
    times = {"trainer": [], "bare": []}
    for _ in range(args.blocks):
        t0 = time.perf_counter()
        ours_block(args.iters)
        times["trainer"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare.run(args.iters)
        times["bare"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"config={args.config} iters/block={args.iters} blocks={args.blocks} threads={torch.get_num_threads()}")
    for k in ("bare", "trainer"):
        print(f"{k:8s} median block {med[k]:.2f} s  ({args.iters / med[k]:.2f} it/s)  blocks: {', '.join(f'{t:.2f}' for t in times[k])}")
    print(f"trainer / bare = {med['trainer'] / med['bare']:.3f}  (target <= 1.03)")
    print(f"output: {out}")


def _train_range(trainer, start, end):
    """Run iterations [start, end) of `trainer` with all its hooks, as train() would."""
    from zenith_det.engine.events import EventStorage

    if trainer.storage is None:
        trainer.storage = EventStorage(start).__enter__()
        trainer.start_iter, trainer.max_iter = start, 10**9
        trainer.before_train()
    for trainer.iter in range(start, end):
        trainer.before_step()
        trainer.run_step()
        trainer.after_step()


if __name__ == "__main__":
    main()
