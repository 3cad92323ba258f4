#!/usr/bin/env python
"""Export a trained model for serving: TorchScript or ONNX, with its meta in a json beside it.

    python tools/export_model.py --weights output/model_final.pth --format torchscript --output exported/
    python tools/export_model.py --weights output/model_final.pth --format onnx --output exported/

The file takes one float32 RGB image (3, H, W) in [0, 1], of any size, and resizes it as the model
does at test time; the json beside it (model.ts.json, model.onnx.json) names its inputs and outputs and carries the categories, keypoints
and test-time sizes (docs/inference.md). Detections below --score-threshold are dropped inside the
exported graph. A missing or foreign --weights, or what this torch's exporter cannot do, is one line
on stderr and exit code 2.
"""
import argparse
import logging
import sys

from zenith_det.utils.cli import OneLineArgumentParser, run_guarded


def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, metavar="PTH", help="a checkpoint a training run wrote")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and model.json")
    p.add_argument("--score-threshold", type=float, default=0.05,
                   help="detections scoring below this are dropped inside the graph (default 0.05)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    if not 0 <= args.score_threshold <= 1:
        p.error(f"argument --score-threshold: {args.score_threshold} is not a score in [0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR, format="[%(name)s] %(message)s")
    return run_guarded(_run, args)


def _run(args) -> int:
    from zenith_det.inference.export import export_model, meta_path

    path = export_model(args.weights, args.format, args.output, score_threshold=args.score_threshold)
    print(f"{args.format}: {path} (its meta: {meta_path(path)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
