#!/usr/bin/env python
"""PNGs of a registered dataset's ground truth, as the data layer reads it.

    python tools/visualize_data.py --config configs/synthetic/keypoint_rcnn_tiny_FPN_zenith_9min.yaml --output vis/ --num 8

Draws the first --num images of --dataset (default: the first of DATASETS.TRAIN, else
of DATASETS.TEST): boxes with category names, masks tinted, keypoints joined by the
category's skeleton, crowd regions in magenta with a hatched tint and "crowd" in their
label. One PNG per image, named after its file, in --output. KEY VALUE overrides
work as for train_net.py (DATASETS.REGISTER to name your own data). A bad argument,
key or dataset is one line on stderr and exit code 2.
"""
import os
import sys

from zenith_det.utils.cli import picture_argument_parser, run_tool


def parse_args(argv=None):
    p = picture_argument_parser(__doc__)
    p.add_argument("--dataset", help="registered dataset name (default: the first of DATASETS.TRAIN)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_tool(_run, parse_args(argv))


def _run(args) -> int:
    from zenith_det.config import load_config
    from zenith_det.data import get_detection_dataset
    from zenith_det.errors import UserError
    from zenith_det.visualization import draw_instances, image_name, load_ground_truth, picture_scale, save_png

    cfg = load_config(args.config_file, args.opts)
    name = args.dataset or next(iter(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)), None)
    if not name:
        raise UserError(f"{args.config_file}: DATASETS.TRAIN and DATASETS.TEST are empty; name a dataset with --dataset")
    dataset = get_detection_dataset(name, cfg, is_train=False)  # every image; annotations read from its table
    for index, image_id in enumerate(dataset.ids[:args.num]):
        image, instances = load_ground_truth(dataset, index)
        scale = picture_scale(*image.shape[1:], args.scale)
        picture = draw_instances(image, instances, dataset.metadata, scale=scale)
        print(save_png(picture, os.path.join(args.output, image_name(dataset, image_id) + ".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
