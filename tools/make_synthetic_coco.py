#!/usr/bin/env python
"""Write the synthetic COCO-format datasets to a folder and print where they are.

    python tools/make_synthetic_coco.py --out /tmp/synthetic --kind all

Each kind gets <out>/<kind>/annotations/*.json plus <out>/<kind>/{train,val}/.
Train on them through DATASETS.REGISTER (the lines printed at the end), or let the
synthetic_* dataset names generate the default sizes under $ZENITH_DATASETS.
"""
import argparse
import os

from zenith_det.data.synthetic import DEFAULT_IMAGE_SIZE, generate_synthetic_coco


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write into (created if absent)")
    parser.add_argument("--kind", choices=["shapes", "keypoints", "all"], default="all")
    parser.add_argument("--num-train", type=int, default=256, help="training images per kind")
    parser.add_argument("--num-val", type=int, default=64, help="validation images per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=list(DEFAULT_IMAGE_SIZE), metavar=("H", "W"),
                        help="typical image height and width (each image varies a little around it)")
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        parser.error("--num-train and --num-val must be at least 1")

    register = []
    for kind in (["shapes", "keypoints"] if args.kind == "all" else [args.kind]):
        for split, num in (("train", args.num_train), ("val", args.num_val)):
            json_path, image_root = generate_synthetic_coco(
                os.path.join(args.out, kind), kind, split, num, image_size=tuple(args.size), seed=args.seed)
            print(f"{kind} {split}: {num} images -> {json_path} (images in {image_root})")
            register.append([f"my_synthetic_{kind}_{split}", json_path, image_root])
    print("DATASETS.REGISTER entries:")
    for entry in register:
        print(f"  - {entry}")


if __name__ == "__main__":
    main()
