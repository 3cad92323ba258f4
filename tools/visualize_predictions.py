#!/usr/bin/env python
"""PNGs of a model's predictions on the first DATASETS.TEST dataset, beside its ground truth.

From a checkpoint (the model is built from the config and run on the images):

    python tools/visualize_predictions.py --config configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml --output vis/ \\
        MODEL.WEIGHTS output/synthetic_mask_rcnn_zenith/model_final.pth

From a COCO results json (category ids are those of the test json, as the evaluator writes them):

    python tools/visualize_predictions.py --config configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml --output vis/ \\
        --results output/synthetic_mask_rcnn_zenith/inference/coco_instances_results.json

Draws the first --num images: predictions scoring at least --score-threshold (boxes with
"name score", masks, keypoints), to the right of the ground truth when the test json has
annotations. The model's labels become the test json's categories as the evaluation maps
them (TEST.CATEGORY_MATCH). One PNG per image, named after its file, in --output. A bad
argument, key, results entry or a missing MODEL.WEIGHTS is one line on stderr, exit code 2.
"""
import os
import sys

from zenith_det.utils.cli import picture_argument_parser, run_tool, score


def parse_args(argv=None):
    p = picture_argument_parser(__doc__)
    p.add_argument("--results", metavar="JSON", help="draw this COCO results json instead of running MODEL.WEIGHTS")
    p.add_argument("--score-threshold", type=score, default=0.5,
                   help="leave out predictions scoring below this (default 0.5)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run_tool(_run, parse_args(argv))


def _run(args) -> int:
    from zenith_det.config import load_config
    from zenith_det.data import get_detection_dataset
    from zenith_det.errors import UserError
    from zenith_det.visualization import (
        draw_instances,
        image_name,
        load_ground_truth,
        picture_scale,
        save_png,
        side_by_side,
    )

    cfg = load_config(args.config_file, args.opts)
    if not cfg.DATASETS.TEST:
        raise UserError(f"{args.config_file}: DATASETS.TEST is empty; name the dataset to draw predictions on")
    if not args.results and not cfg.MODEL.WEIGHTS:
        raise UserError("no predictions to draw: add MODEL.WEIGHTS path/to/model.pth to the command line, "
                        "or give --results path/to/coco_instances_results.json")
    name = cfg.DATASETS.TEST[0]
    dataset = get_detection_dataset(name, cfg, is_train=False)
    ids = dataset.ids[:args.num]
    predict = _results_file(cfg, args.results, dataset, ids) if args.results else _model(cfg, name)
    with_gt = dataset.table.num_annotations > 0
    for index, image_id in enumerate(ids):
        image, gt = load_ground_truth(dataset, index)
        scale = picture_scale(*image.shape[1:], args.scale)
        picture = draw_instances(image, predict(image_id, image), dataset.metadata,
                                 score_threshold=args.score_threshold, scale=scale)
        if with_gt:
            picture = side_by_side(draw_instances(image, gt, dataset.metadata, scale=scale), picture)
        print(save_png(picture, os.path.join(args.output, image_name(dataset, image_id) + ".png")))
    return 0


def _model(cfg, name):
    """predict(image_id, image) -> instances, from MODEL.WEIGHTS run on the image."""
    import torch

    from zenith_det.engine import resolve_device
    from zenith_det.data.categories import test_category_maps
    from zenith_det.evaluation import instances_to_coco_json
    from zenith_det.modeling import build_model
    from zenith_det.modeling.meta import metadata_for_weights
    from zenith_det.visualization import results_to_instances

    # The model's label space: its checkpoint's categories, else those of DATASETS.TRAIN.
    model_metadata = metadata_for_weights(cfg)
    metadata, label_to_category_id = test_category_maps(cfg, model_metadata)[name]  # the test json's categories
    device = resolve_device(cfg)
    model = build_model(cfg, model_metadata).to(device).eval()  # loads MODEL.WEIGHTS

    def predict(image_id, image):
        with torch.inference_mode():
            output = model([image.to(device, torch.float32).div_(255)])[0]
        results = instances_to_coco_json(output, image_id, label_to_category_id)
        return results_to_instances(results, metadata, *image.shape[1:])

    return predict


def _results_file(cfg, path, dataset, ids):
    """predict(image_id, image) -> instances, from a COCO results json, checked against the test json."""
    from zenith_det.evaluation import check_task_results, load_coco_gt, load_results
    from zenith_det.evaluation.conversion import results_tasks
    from zenith_det.visualization import results_to_instances

    results = load_results(path)  # a list of objects, or one line
    gt = load_coco_gt(dataset.metadata.json_file, cfg.TEST.EVALUATOR_BACKEND)
    sigmas = list(cfg.TEST.KEYPOINT_OKS_SIGMAS) or None
    for task in ["bbox"] + [t for t in results_tasks(results) if t != "bbox"]:  # boxes are drawn: always checked
        check_task_results(gt, results, task, path, sigmas)
    wanted = set(ids)
    by_image = {i: [] for i in ids}
    for r in results:
        if r["image_id"] in wanted:
            by_image[r["image_id"]].append(r)

    def predict(image_id, image):
        return results_to_instances(by_image[image_id], dataset.metadata, *image.shape[1:], source=path)

    return predict


if __name__ == "__main__":
    sys.exit(main())
