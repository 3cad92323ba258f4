#!/usr/bin/env python
"""Training-iteration speed, measured side by side in one process.

Two comparisons, on the same model, data and config:
  * our Trainer (all hooks) against a bare torchvision-style loop: the engine's overhead;
  * our Trainer with each of --optimizers (e.g. ZENITH and SGD): the optimizer's
    share of a real iteration.

Loops run in alternating blocks (A B C A B C ...), so drift in machine load hits
all of them alike, and the medians of the block times are compared. Checkpoints
and evaluation are off, since the bare loop has none.

    python benchmarks/benchmark_engine.py                              # CPU, synthetic Mask R-CNN
    python benchmarks/benchmark_engine.py --optimizers ZENITH SGD SOLVER.AMP.ENABLED True \\
        SOLVER.AMP.DTYPE bfloat16 MODEL.BACKBONE.NAME resnet50_fpn      # e.g. on a GPU
"""
import argparse
import statistics
import tempfile

import torch

from zenith_det.config import load_config
from zenith_det.data import build_detection_train_loader
from zenith_det.engine import Trainer, default_setup
from zenith_det.engine.events import EventStorage

from common import wall_seconds


class BareLoop:
    """torchvision references/detection/engine.py's train_one_epoch, stripped to the step."""

    def __init__(self, trainer: Trainer):
        self.model, self.optimizer, self.scheduler = trainer.model, trainer.optimizer, trainer.scheduler
        self.amp_dtype, self.scaler = trainer.amp_dtype, trainer.grad_scaler
        self.data = iter(build_detection_train_loader(trainer.cfg))
        self.device = trainer.device

    def run(self, iters):
        for _ in range(iters):
            images, targets = next(self.data)
            images = [img.to(self.device, non_blocking=True) for img in images]
            targets = [{k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                       for t in targets]
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                losses = sum(self.model(images, targets).values())
            self.optimizer.zero_grad()
            if self.scaler is not None:
                self.scaler.scale(losses).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                losses.backward()
                self.optimizer.step()
            self.scheduler.step()


class TrainerBlocks:
    """Runs a Trainer's iterations in blocks, every hook included, as one continuing run."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.next_iter = 0
        trainer.data_loader = build_detection_train_loader(trainer.cfg)
        trainer.storage = EventStorage(0).__enter__()
        trainer.start_iter, trainer.max_iter = 0, trainer.cfg.SOLVER.MAX_ITER
        trainer.before_train()

    def run(self, iters):
        t = self.trainer
        for t.iter in range(self.next_iter, self.next_iter + iters):
            t.before_step()
            t.run_step()
            t.after_step()
        self.next_iter += iters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml")
    parser.add_argument("--optimizers", nargs="+", default=["ZENITH"], help="SOLVER.OPTIMIZER values to race")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare torchvision-style loop")
    parser.add_argument("--iters", type=int, default=20, help="iterations per block")
    parser.add_argument("--blocks", type=int, default=4, help="timed blocks per loop (after one warm-up block)")
    parser.add_argument("opts", nargs="*", help="config overrides")
    args = parser.parse_intermixed_args()
    total = args.iters * (args.blocks + 1)
    loops = {}
    for name in args.optimizers:
        cfg = load_config(args.config, [
            "OUTPUT_DIR", tempfile.mkdtemp(prefix=f"bench_{name}_"), "SOLVER.OPTIMIZER", name,
            "SOLVER.MAX_ITER", str(100 * total), "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.MAX_TIME_HOURS", "0",
            "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", *args.opts,
        ])
        default_setup(cfg, resume=False)
        loops[f"Trainer[{name}]"] = TrainerBlocks(Trainer(cfg))
    if not args.no_bare:
        # Its own model, optimizer and loader, built exactly as the first trainer's.
        twin = Trainer(loops[f"Trainer[{args.optimizers[0]}]"].trainer.cfg)
        loops[f"bare loop[{args.optimizers[0]}]"] = BareLoop(twin)

    device = next(iter(loops.values())).trainer.device if loops else torch.device("cpu")

    def timed(loop):
        return wall_seconds(lambda: loop.run(args.iters), device)

    for loop in loops.values():  # warm-up block
        timed(loop)
    times = {name: [] for name in loops}
    for _ in range(args.blocks):
        for name, loop in loops.items():
            times[name].append(timed(loop))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"config={args.config} overrides={' '.join(args.opts) or '-'}")
    print(f"device={device} iters/block={args.iters} blocks={args.blocks} threads={torch.get_num_threads()}")
    for name in loops:
        blocks = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:24s} {1e3 * med[name] / args.iters:8.1f} ms/iter  ({args.iters / med[name]:6.2f} it/s)  blocks [s]: {blocks}")
    first = f"Trainer[{args.optimizers[0]}]"
    bare = f"bare loop[{args.optimizers[0]}]"
    if bare in med:
        print(f"engine overhead: {first} / {bare} = {med[first] / med[bare]:.3f}  (target <= 1.03)")
    if "SGD" in args.optimizers:
        for name in args.optimizers:
            if name != "SGD":
                print(f"iteration time Trainer[{name}] / Trainer[SGD] = {med[f'Trainer[{name}]'] / med['Trainer[SGD]']:.3f}")


if __name__ == "__main__":
    main()
