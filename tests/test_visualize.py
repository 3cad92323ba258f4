"""Pictures (zenith_det/visualization.py, tools/visualize_*.py, the TensorBoard hook), checked by their pixels."""
import glob
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST_CLI, REPO, load_tool
from zenith_det.config import load_config
from zenith_det.data import DatasetMetadata, get_detection_dataset
from zenith_det.engine import EventStorage
from zenith_det.engine.visualize_hook import VisualizePredictions
from zenith_det.modeling import build_model
from zenith_det.utils.budget import BudgetClock
from zenith_det.visualization import (
    CROWD_COLOR,
    KEYPOINT_COLOR,
    MASK_ALPHA,
    SKELETON_COLOR,
    class_color,
    draw_instances,
    load_ground_truth,
    results_to_instances,
)

MASK_CONFIG = os.path.join(REPO, "configs", "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml")
KEYPOINT_CONFIG = os.path.join(REPO, "configs", "synthetic", "keypoint_rcnn_tiny_FPN_zenith_9min.yaml")
GREY = (90, 100, 110)
META = DatasetMetadata(json_file="x.json", image_root="x", thing_classes=["cat", "dog"],
                       contiguous_id_to_category_id={1: 7, 2: 9}, category_id_to_contiguous_id={7: 1, 9: 2},
                       keypoint_names=["a", "b", "c"], keypoint_skeleton=[[1, 2], [2, 3]])


def _grey(height=60, width=80):
    return torch.tensor(GREY, dtype=torch.uint8)[:, None, None].expand(3, height, width).contiguous()


def _px(image, x, y):
    return tuple(image[:, y, x].tolist())


def _instances(boxes, labels, **extra):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), **extra}


# ---------------------------------------------------------------- drawing, by the pixels


def test_box_edge_has_the_class_colour_and_the_rest_is_untouched():
    image = _grey()
    out = draw_instances(image, _instances([[10, 12, 50, 40]], [2]), META)
    assert _px(out, 10, 30) == class_color(2) == _px(out, 50, 30) == _px(out, 30, 40)  # left, right, bottom edges
    assert _px(out, 30, 30) == GREY  # inside, below the label
    assert _px(out, 70, 50) == GREY
    assert out.dtype == torch.uint8 and out.shape == image.shape


def test_mask_interior_is_tinted_towards_its_colour_outside_unchanged():
    image = _grey()
    mask = torch.zeros(1, 60, 80, dtype=torch.bool)
    mask[0, 25:45, 20:60] = True
    out = draw_instances(image, _instances([[5, 5, 75, 55]], [1], masks=mask), META)
    color, raw = torch.tensor(class_color(1)), torch.tensor(GREY)
    inside = out[:, 35, 40].long()
    assert (torch.sign(inside - raw) == torch.sign(color - raw)).all(), inside
    assert ((inside - ((1 - MASK_ALPHA) * raw + MASK_ALPHA * color)).abs() <= 1).all(), inside
    assert _px(out, 65, 35) == GREY and _px(out, 40, 50) == GREY  # beside the mask, inside the box
    assert (image == _grey()).all()  # drawn on a copy


def test_keypoints_at_their_coordinates_joined_by_the_skeleton():
    keypoints = torch.tensor([[[12, 30, 2], [40, 30, 2], [70, 30, 0]]], dtype=torch.float32)  # c is unlabelled
    image = _grey()
    out = draw_instances(image, _instances([[2, 2, 78, 58]], [1], keypoints=keypoints), META)
    assert _px(out, 12, 30) == KEYPOINT_COLOR and _px(out, 40, 30) == KEYPOINT_COLOR
    near_middle = {_px(out, 26 + dx, 30 + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    assert SKELETON_COLOR in near_middle  # the a-b bone
    assert _px(out, 70, 30) == GREY and _px(out, 55, 30) == GREY  # no c, no b-c bone


def test_crowd_region_has_its_own_colour_and_a_hatched_tint():
    masks = torch.zeros(2, 60, 80, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 10:30, 50:70] = True
    gt = _instances([[5, 5, 35, 50], [45, 5, 75, 50]], [1, 1], masks=masks, iscrowd=torch.tensor([True, False]))
    out = draw_instances(_grey(), gt, META)
    assert _px(out, 5, 40) == CROWD_COLOR and _px(out, 45, 40) == class_color(1)
    crowd_changed = (out[:, 18:30, 10:30] != _grey()[:, 18:30, 10:30]).any(0)
    object_changed = (out[:, 18:30, 50:70] != _grey()[:, 18:30, 50:70]).any(0)
    assert object_changed.all()
    assert 0.3 < crowd_changed.float().mean() < 0.7  # stripes: tinted and untouched pixels alternate


def test_score_threshold_leaves_low_scoring_predictions_out():
    preds = _instances([[5, 5, 30, 50], [45, 5, 75, 50]], [1, 2], scores=torch.tensor([0.9, 0.2]))
    out = draw_instances(_grey(), preds, META, score_threshold=0.5)
    assert _px(out, 5, 40) == class_color(1)
    assert (out[:, 20:, 40:] == _grey()[:, 20:, 40:]).all()  # nothing of the 0.2 box (below the 0.9 one's label)
    out = draw_instances(_grey(), preds, META, score_threshold=0.1)
    assert _px(out, 45, 40) == class_color(2)


def test_scale_enlarges_the_picture_and_what_is_on_it():
    out = draw_instances(_grey(), _instances([[10, 12, 50, 40]], [2]), META, scale=2)
    assert out.shape == (3, 120, 160)
    assert _px(out, 20, 60) == class_color(2) and _px(out, 21, 60) == class_color(2)  # 2 px wide


def test_results_become_instances_of_the_test_json_categories():
    from pycocotools import mask as mask_util

    mask = np.zeros((60, 80), np.uint8, order="F")
    mask[10:20, 10:30] = 1
    rle = mask_util.encode(mask)
    results = [{"image_id": 1, "category_id": 9, "bbox": [10, 10, 20, 10], "score": 0.8,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}]
    inst = results_to_instances(results, META, 60, 80)
    assert inst["labels"].tolist() == [2] and inst["boxes"].tolist() == [[10, 10, 30, 20]]
    assert inst["masks"].shape == (1, 60, 80) and int(inst["masks"].sum()) == 200
    with pytest.raises(Exception, match="category_id 3"):
        results_to_instances([dict(results[0], category_id=3)], META, 60, 80)


# ---------------------------------------------------------------- the data layer's ground truth


def _crowd_index(dataset):
    t = dataset.table
    return int(np.unique(t.image_of_rows()[t.iscrowd])[0])


def test_ground_truth_shows_crowd_regions_the_training_view_leaves_out(datasets_root):
    cfg = load_config(KEYPOINT_CONFIG, ["MODEL.DEVICE", "cpu"])
    dataset = get_detection_dataset("synthetic_keypoints_val", cfg, is_train=False)
    index = _crowd_index(dataset)
    image, gt = load_ground_truth(dataset, index)
    assert gt["iscrowd"].any() and not gt["iscrowd"].all()
    assert len(dataset.target(index)["boxes"]) < len(gt["boxes"])  # crowd regions are never targets
    assert image.dtype == torch.uint8 and gt["masks"].shape[1:] == image.shape[1:]
    out = draw_instances(image, gt, dataset.metadata)
    c = int(torch.nonzero(gt["iscrowd"])[0])
    x0, y0, x1, y1 = gt["boxes"][c].long().tolist()
    assert _px(out, x0, (y0 + y1) // 2) == CROWD_COLOR
    person = int(torch.nonzero(~gt["iscrowd"])[0])
    visible = gt["keypoints"][person][gt["keypoints"][person][:, 2] > 0]
    assert len(visible)
    for x, y, _ in visible.long().tolist():
        assert _px(out, x, y) == KEYPOINT_COLOR


# ---------------------------------------------------------------- the tools


def _pngs(folder):
    return sorted(glob.glob(os.path.join(folder, "*.png")))


def _size(path):
    with Image.open(path) as img:
        return img.size


def _sizes(dataset, n):
    t = dataset.table
    return [(int(t.width[i]), int(t.height[i])) for i in np.searchsorted(t.image_id, dataset.ids[:n])]


@pytest.mark.parametrize("config, name", [(KEYPOINT_CONFIG, "synthetic_keypoints_train"),
                                          (MASK_CONFIG, "synthetic_shapes_val")])
def test_visualize_data_writes_n_pngs_of_the_images_size(datasets_root, tmp_path, config, name):
    out = str(tmp_path / "vis")
    args = ["--config", config, "--output", out, "--num", "3", "--scale", "1", "MODEL.DEVICE", "cpu"]
    if name.endswith("_val"):
        args += ["--dataset", name]
    assert load_tool("visualize_data").main(args) == 0
    pngs = _pngs(out)
    assert len(pngs) == 3
    sizes = _sizes(get_detection_dataset(name, None, is_train=False), 3)
    assert [_size(p) for p in pngs] == sizes  # named by id
    # By default, small images are drawn enlarged: the longest side reaches 512 px.
    assert load_tool("visualize_data").main(args[:6] + args[8:] + ["--output", str(tmp_path / "big")]) == 0
    for path, (width, height) in zip(_pngs(str(tmp_path / "big")), sizes):
        scale = 512 / max(width, height)
        assert _size(path) == (round(width * scale), round(height * scale))


@pytest.mark.parametrize("scale", ["inf", "1e6", "nan", "0"])
def test_a_scale_that_would_overflow_or_exhaust_memory_is_one_line(datasets_root, tmp_path, scale, capsys):
    code = _main("visualize_data", ["--config", MASK_CONFIG, "--output", str(tmp_path / "vis"), "--num", "1",
                                    "--scale", scale, "MODEL.DEVICE", "cpu"])
    _one_line(capsys, code, "--scale")
    assert not _pngs(str(tmp_path / "vis"))


def test_images_of_the_same_name_in_two_folders_keep_their_own_pictures(tmp_path):
    from zenith_det.data import get_detection_dataset as load
    from zenith_det.visualization import image_name

    images = tmp_path / "images"
    for folder in ("a", "b"):
        (images / folder).mkdir(parents=True)
        Image.new("RGB", (20, 10)).save(images / folder / "x.jpg")
    data = {"images": [{"id": 1, "file_name": "a/x.jpg", "width": 20, "height": 10},
                       {"id": 2, "file_name": "b/x.jpg", "width": 20, "height": 10}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    cfg = load_config(MASK_CONFIG, ["DATASETS.REGISTER", f"[['two', '{tmp_path}/gt.json', '{images}']]",
                                    "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"])
    dataset = load("two", cfg, is_train=False)
    assert [image_name(dataset, i) for i in (1, 2)] == [os.path.join("a", "x"), os.path.join("b", "x")]


def _weights(tmp_path, config):
    cfg = load_config(config, ["MODEL.DEVICE", "cpu"])
    dataset = get_detection_dataset(cfg.DATASETS.TRAIN[0], cfg, is_train=False)
    torch.manual_seed(0)
    path = str(tmp_path / "w.pth")
    torch.save(build_model(cfg, dataset.metadata).state_dict(), path)
    return path


def test_visualize_predictions_of_a_checkpoint_beside_the_ground_truth(datasets_root, tmp_path):
    out = str(tmp_path / "vis")
    code = load_tool("visualize_predictions").main([
        "--config", MASK_CONFIG, "--output", out, "--num", "2", "--score-threshold", "0", "--scale", "1", *FAST_CLI,
        "DATASETS.TEST", "('synthetic_shapes_val',)", "TEST.DETECTIONS_PER_IMAGE", "10",
        "MODEL.WEIGHTS", _weights(tmp_path, MASK_CONFIG)])
    assert code == 0
    pngs = _pngs(out)
    assert len(pngs) == 2
    sizes = _sizes(get_detection_dataset("synthetic_shapes_val", None, is_train=False), 2)
    assert sorted(_size(p) for p in pngs) == sorted((2 * w + 4, h) for w, h in sizes)


def test_visualize_predictions_of_a_results_json(datasets_root, tmp_path):
    dataset = get_detection_dataset("synthetic_shapes_val", None, is_train=False)
    first = dataset.ids[0]
    anns = [a for a in json.load(open(dataset.json_file))["annotations"] if a["image_id"] == first and not a["iscrowd"]]
    results = [{"image_id": first, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in anns]
    results[-1]["score"] = 0.1
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = str(tmp_path / "vis")
    code = load_tool("visualize_predictions").main([
        "--config", MASK_CONFIG, "--output", out, "--num", "1", "--results", str(path), "--scale", "1",
        "MODEL.DEVICE", "cpu"])
    assert code == 0
    (png,) = _pngs(out)
    (width, height), = _sizes(dataset, 1)
    assert _size(png) == (2 * width + 4, height)
    right = torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1)[:, :, width + 4:]
    meta = dataset.metadata
    for r in results:
        x, y, w, h = (int(v) for v in r["bbox"])
        color = class_color(meta.category_id_to_contiguous_id[r["category_id"]])
        edge = {_px(right, x, y + h // 2 + d) for d in (-1, 0, 1)}
        assert (color in edge) == (r["score"] >= 0.5), (r, edge)


def _main(tool, args):
    """The tool's exit code, whether it returns it or argparse exits with it."""
    try:
        return load_tool(tool).main(args)
    except SystemExit as e:
        return e.code


def _one_line(capsys, code, *words):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], err[0]


@pytest.mark.parametrize("case", ["no_weights", "missing_weights", "bad_results", "bad_num"])
def test_visualize_predictions_bad_input_is_one_line(datasets_root, tmp_path, capsys, case):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps([{"image_id": 1000, "category_id": 2, "score": 0.5}]))
    extra, words = {
        "no_weights": ([], ["MODEL.WEIGHTS", "--results"]),
        "missing_weights": (["MODEL.WEIGHTS", str(tmp_path / "nope.pth")], ["MODEL.WEIGHTS", "nope.pth"]),
        "bad_results": (["--results", str(bad)], ["results.json", "bbox"]),
        "bad_num": (["--num", "0"], ["--num"]),
    }[case]
    capsys.readouterr()
    code = _main("visualize_predictions", ["--config", MASK_CONFIG, "--output", str(tmp_path / "vis"),
                                           "MODEL.DEVICE", "cpu", *extra])
    _one_line(capsys, code, *words)
    assert not _pngs(str(tmp_path / "vis"))


def test_visualize_data_unknown_dataset_is_one_line(datasets_root, tmp_path, capsys):
    capsys.readouterr()
    code = _main("visualize_data", ["--config", MASK_CONFIG, "--output", str(tmp_path / "vis"), "--dataset", "no_such_set"])
    _one_line(capsys, code, "no_such_set", "DATASETS.REGISTER")


# ---------------------------------------------------------------- TensorBoard, after each evaluation


def _image_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        acc = EventAccumulator(path, size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            events.setdefault(tag, []).extend(acc.Images(tag))
    return events


def _fake_trainer(tmp_path, vis_images):
    cfg = load_config(MASK_CONFIG, [*FAST_CLI, "DATASETS.TEST", "('synthetic_shapes_val',)", "TEST.VIS_IMAGES",
                                    str(vis_images), "OUTPUT_DIR", str(tmp_path / "run")])
    torch.manual_seed(0)
    model = build_model(cfg, get_detection_dataset("synthetic_shapes_train", cfg, is_train=False).metadata).train()
    trainer = SimpleNamespace(cfg=cfg, model=model, completed_iters=0, storage=None)
    trainer.evaluation_model = lambda: model
    return trainer


@pytest.mark.slow
def test_hook_writes_pictures_to_tensorboard_after_each_evaluation_only(datasets_root, tmp_path):
    trainer = _fake_trainer(tmp_path, 2)
    hook = VisualizePredictions()
    hook.trainer = trainer
    with EventStorage() as trainer.storage:
        trainer.completed_iters = 3
        hook.after_step()  # no evaluation yet
        assert not glob.glob(str(tmp_path / "run" / "events.out.tfevents.*"))
        trainer.storage.put_scalar("eval_seconds", 1.0, smoothing_hint=False)  # what EvalHook records
        trainer.completed_iters = 4
        hook.after_step()
        hook.after_step()  # the same evaluation: nothing new
        trainer.storage.put_scalar("eval_seconds", 1.0, smoothing_hint=False)  # the final one
        trainer.completed_iters = 6
        hook.after_train()
    assert trainer.model.training  # the mode it had
    events = _image_events(str(tmp_path / "run"))
    assert len(events) == 2 and all(tag.startswith("predictions/synthetic_shapes_val/") for tag in events)
    dataset = get_detection_dataset("synthetic_shapes_val", None, is_train=False)
    sizes = {(h, 2 * w + 4) for w, h in _sizes(dataset, 2)}
    for images in events.values():
        assert [e.step for e in images] == [4, 6]
        assert {(e.height, e.width) for e in images} <= sizes


def test_the_budget_keeps_the_time_the_pictures_take(datasets_root, tmp_path):
    trainer = _fake_trainer(tmp_path, 2)
    ticks = iter(range(0, 1000, 7))  # each reading of the clock is 7 s after the one before
    trainer.clock = BudgetClock(3600.0, clock=lambda: float(next(ticks)))
    before = trainer.clock.reserve()
    hook = VisualizePredictions()
    hook.trainer = trainer
    with EventStorage() as trainer.storage:
        trainer.storage.put_scalar("eval_seconds", 1.0, smoothing_hint=False)
        trainer.completed_iters = 4
        hook.after_step()
    # the wall-clock budget now stops training early enough for the final evaluation's pictures
    assert trainer.clock.picture_seconds == 7.0 and trainer.clock.reserve() == before + 7.0
    resumed = BudgetClock(3600.0)
    resumed.load_state_dict(trainer.clock.state_dict())
    assert resumed.picture_seconds == 7.0


def test_hook_with_vis_images_0_writes_nothing(datasets_root, tmp_path):
    trainer = _fake_trainer(tmp_path, 0)
    hook = VisualizePredictions()
    hook.trainer = trainer
    with EventStorage() as trainer.storage:
        trainer.storage.put_scalar("eval_seconds", 1.0)
        hook.after_step()
        hook.after_train()
    assert not glob.glob(str(tmp_path / "run" / "events.out.tfevents.*"))


def test_storage_counts_values_without_reading_them():
    with EventStorage() as storage:
        assert storage.count("eval_seconds") == 0
        storage.put_scalar("loss", torch.tensor(1.0))
        storage.put_scalar("loss", torch.tensor(2.0))
        assert storage.count("loss") == 2 and len(storage._pending) == 2  # no host sync
