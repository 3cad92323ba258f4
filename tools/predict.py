#!/usr/bin/env python
"""Run a trained model on your own images: one drawn PNG per image, and one COCO json of results.

    python tools/predict.py --weights output/model_final.pth --input a.jpg photos/ 'shots/*.png' --output out/
    python tools/predict.py --weights model_final.pth --input photos/ --output out/ --json out/results.json \\
        --score-threshold 0.5 --device cpu --batch-size 4

The checkpoint is all it needs: its config, categories and keypoints travel with it. --input takes
files, folders (their images, sub-folders included) and glob patterns. Each image's picture is
written under --output with the image's path below its folder (a file given by name: its name),
so images of the same name in different folders keep their own pictures. The json (default
OUTPUT/results.json) holds "images", "categories" and "annotations" (the detections, with
"score"), so tools/eval_coco.py scores it against a ground truth whose file names match.

A file that is not a readable image is skipped with one warning line and counted in the summary.
A missing or foreign --weights is one line on stderr and exit code 2.
"""
import sys

from zenith_det.utils.cli import checkpoint_argument_parser, positive_int, run_tool, score


def parse_args(argv=None):
    p = checkpoint_argument_parser(__doc__)
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="image files, folders of images, or glob patterns")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures (created if absent)")
    p.add_argument("--json", metavar="FILE", help="the COCO results json (default OUTPUT/results.json)")
    p.add_argument("--score-threshold", type=score, default=0.5,
                   help="keep detections scoring at least this, drawn and written (default 0.5; "
                        "0.05 for a json to compute AP from)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when one is visible)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_tool(_run, parse_args(argv))


def _run(args) -> int:
    from zenith_det.inference.predict_files import predict_files

    summary = predict_files(args.weights, args.input, args.output, json_path=args.json,
                            score_threshold=args.score_threshold, device=args.device, batch_size=args.batch_size)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
