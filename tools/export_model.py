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
import logging
import sys

from zenith_det.utils.cli import checkpoint_argument_parser, run_tool, score


def parse_args(argv=None):
    p = checkpoint_argument_parser(__doc__)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and its json")
    p.add_argument("--score-threshold", type=score, default=0.05,
                   help="detections scoring below this are dropped inside the graph (default 0.05)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_tool(_run, parse_args(argv), logging.ERROR)


def _run(args) -> int:
    from zenith_det.inference.export import export_model, meta_path

    path = export_model(args.weights, args.format, args.output, score_threshold=args.score_threshold)
    print(f"{args.format}: {path} (its meta: {meta_path(path)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
