#!/usr/bin/env python
"""What using a trained model costs: the Predictor against a bare torchvision model, batches
against one-by-one, and ONNX Runtime against eager torch, side by side on the same images.

    python benchmarks/benchmark_predictor.py                            # the synthetic demo model, CPU
    python benchmarks/benchmark_predictor.py --weights output/model_final.pth --images photos/

Rows, each a ratio of images per second over interleaved rounds (median, and the lowest and
highest over --blocks blocks of rounds: a difference inside that spread is noise):
  Predictor ÷ bare     `predictor(path)` against the same torchvision model called as one would
                       by hand: decode the file (torchvision.io), scale to [0, 1], model.eval()([image]).
                       Goal >= 0.97.
  predict_batch ÷ one  `predict_batch(paths, batch_size=B)` against one call per image.
  ONNX Runtime ÷ eager the exported file on ONNX Runtime (CPU) against the eager model, on the
                       same decoded tensors.
Without --weights, a checkpoint of the synthetic Mask R-CNN config is built untrained (its
detections are plentiful at the 0.05 threshold, so post-processing is timed at full load).
"""
import argparse
import os
import sys
import tempfile
import time

import torch
from torchvision.io import ImageReadMode, decode_image

from common import ratio_with_block_spread, torch_threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def untrained_checkpoint(folder: str) -> str:
    """The synthetic demo config's model, untrained, saved as the trainer saves it."""
    from zenith_det.config import load_config
    from zenith_det.data import metadata_from_cfg
    from zenith_det.modeling import build_model
    from zenith_det.modeling.meta import model_meta

    cfg = load_config(os.path.join(REPO, "configs", "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml"), ["MODEL.DEVICE", "cpu"])
    metadata = metadata_from_cfg(cfg)
    torch.manual_seed(0)
    path = os.path.join(folder, "untrained.pth")
    torch.save({"model": build_model(cfg, metadata).state_dict(), "config": cfg.dump(), "iteration": 0,
                "meta": model_meta(cfg, metadata)}, path)
    return path


def image_files(folder: str, count: int):
    from zenith_det.inference.predict_files import expand_inputs

    return [path for path, _ in expand_inputs([folder])][:count]


def synthetic_val_images(count: int):
    from zenith_det.config import load_config
    from zenith_det.data import get_detection_dataset

    cfg = load_config(os.path.join(REPO, "configs", "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml"), ["MODEL.DEVICE", "cpu"])
    dataset = get_detection_dataset("synthetic_shapes_val", cfg, is_train=False)
    return [os.path.join(dataset.metadata.image_root, dataset.table.file_name(i)) for i in range(count)]


def rounds_of(ways: dict, rounds: int):
    """{name: [seconds per round]}, the ways interleaved round by round, each round starting one
    way later (no way always runs first, on caches the previous one left)."""
    times = {name: [] for name in ways}
    names = list(ways)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a checkpoint (default: the synthetic config's model, untrained)")
    parser.add_argument("--images", help="a folder of images (default: the synthetic val images)")
    parser.add_argument("--count", type=int, default=16, help="images per round (default 16)")
    parser.add_argument("--batch-size", type=int, default=4, help="for the predict_batch row (default 4)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (this project's machines have 2)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime row")
    args = parser.parse_args(argv)

    from zenith_det import Predictor
    from zenith_det.inference import load_image
    from zenith_det.inference.export import export_model, onnx_session

    with torch_threads(args.threads), tempfile.TemporaryDirectory(prefix="benchmark_predictor_") as tmp:
        weights = args.weights or untrained_checkpoint(tmp)
        paths = image_files(args.images, args.count) if args.images else synthetic_val_images(args.count)
        predictor = Predictor.from_checkpoint(weights, device="cpu", score_threshold=0.05)
        bare = predictor.model  # a torchvision MaskRCNN / KeypointRCNN in eval mode, the same weights

        def bare_calls():
            with torch.inference_mode():
                for path in paths:
                    pixels = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=True)
                    bare([pixels.float().div_(255)])

        tensors = [load_image(p) for p in paths]
        ways = {
            "bare torchvision": bare_calls,
            "Predictor, one by one": lambda: [predictor(p) for p in paths],
            f"predict_batch({args.batch_size})": lambda: predictor.predict_batch(paths, batch_size=args.batch_size),
        }

        def eager_tensors():
            with torch.inference_mode():
                for t in tensors:
                    bare([t])

        ways["eager, decoded"] = eager_tensors
        if not args.no_onnx:
            session = onnx_session(export_model(weights, "onnx", tmp))
            ways["ONNX Runtime, decoded"] = lambda: [session.run(None, {"image": t.numpy()}) for t in tensors]
        for way in ways.values():  # warm-up: first-call allocations and ORT's graph setup
            way()
        times = rounds_of(ways, args.rounds)

    print(f"torch {torch.__version__}, {args.threads} threads, CPU; {len(paths)} images per round, {args.rounds} rounds "
          f"in {args.blocks} blocks; weights: {args.weights or 'synthetic config, untrained'}")
    print(f"{'way':28s} {'images/s':>9s}   {'ratio':40s} median [lowest, highest block]")
    rows = [("bare torchvision", None), ("Predictor, one by one", "bare torchvision"),
            (f"predict_batch({args.batch_size})", "Predictor, one by one"), ("eager, decoded", None)]
    if not args.no_onnx:
        rows.append(("ONNX Runtime, decoded", "eager, decoded"))
    ratios = {}
    for name, peer in rows:
        speed = len(paths) / sorted(times[name])[len(times[name]) // 2]
        if peer is None:
            print(f"{name:28s} {speed:9.2f}")
            continue
        ratio, low, high = ratio_with_block_spread(times[peer], times[name], args.blocks)  # speed = 1 / time
        ratios[name] = ratio
        print(f"{name:28s} {speed:9.2f}   {name + ' ÷ ' + peer:40s} {ratio:.3f} [{low:.3f}, {high:.3f}]")
    return ratios


if __name__ == "__main__":
    sys.exit(main() and 0)
