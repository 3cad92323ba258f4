"""Using a model: self-describing checkpoints, the Predictor, tools/predict.py and results a COCO tool reads.

The checkpoints here are built, untrained, from the synthetic config (a randomly initialised
model scores every class near 1/(K+1), so it detects plenty); tests/test_export.py and the slow
test at the end use checkpoints the trainer wrote.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from conftest import REPO, load_tool
from zenith_det import Predictor
from zenith_det.config import load_config
from zenith_det.data import get_detection_dataset, metadata_from_cfg
from zenith_det.errors import UserError
from zenith_det.inference import load_for_inference, load_image
from zenith_det.inference.predict_files import expand_inputs
from zenith_det.modeling import build_model
from zenith_det.modeling.meta import metadata_from_meta, model_meta

SMALL = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0"]


def _config(name, extra=()):
    return load_config(os.path.join(REPO, "configs", "synthetic", name), SMALL + list(extra))


def _save_checkpoint(cfg, path, with_meta=True):
    """What the trainer's state_dict holds that inference reads: weights, config, meta."""
    metadata = metadata_from_cfg(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, metadata)
    state = {"model": model.state_dict(), "config": cfg.dump(), "iteration": 0}
    if with_meta:
        state["meta"] = model_meta(cfg, metadata)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def mask_checkpoint(datasets_root, tmp_path_factory):
    return _save_checkpoint(_config("mask_rcnn_tiny_FPN_zenith_9min.yaml"), str(tmp_path_factory.mktemp("ckpt") / "mask.pth"))


@pytest.fixture(scope="module")
def val_images(datasets_root):
    dataset = get_detection_dataset("synthetic_shapes_val", _config("mask_rcnn_tiny_FPN_zenith_9min.yaml"), is_train=False)
    table = dataset.table
    return [os.path.join(dataset.metadata.image_root, table.file_name(i)) for i in range(4)]


def _same(a, b):
    assert a["names"] == b["names"]
    for key in ("boxes", "scores", "labels", "category_ids", "masks"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_the_meta_describes_categories_and_keypoints_as_the_json_does(datasets_root):
    cfg = _config("keypoint_rcnn_tiny_FPN_zenith_9min.yaml")
    metadata = metadata_from_cfg(cfg)
    meta = model_meta(cfg, metadata)
    assert [c["name"] for c in meta["categories"]] == metadata.thing_classes
    assert meta["keypoints"]["names"] == metadata.keypoint_names and len(meta["keypoints"]["oks_sigmas"]) == 17
    assert meta["input"] == {"format": "RGB", "pixel_range": [0, 1], "min_size_test": 96, "max_size_test": 128}
    again = metadata_from_meta(json.loads(json.dumps(meta)), "ckpt.pth")  # plain types: survives json
    for field in ("thing_classes", "contiguous_id_to_category_id", "keypoint_names", "keypoint_flip_indices",
                  "keypoint_skeleton"):
        assert getattr(again, field) == getattr(metadata, field), field


def test_the_predictor_takes_a_path_a_pil_image_an_array_bgr_and_a_tensor_alike(mask_checkpoint, val_images):
    predictor = Predictor.from_checkpoint(mask_checkpoint, device="cpu", score_threshold=0.05)
    path = val_images[0]
    by_path = predictor(path)
    assert len(by_path["boxes"]) > 0
    assert set(by_path["names"]) <= set(predictor.class_names)
    ids = {c["id"]: c["name"] for c in predictor.meta["categories"]}
    assert [ids[i] for i in by_path["category_ids"].tolist()] == by_path["names"]
    height, width = by_path["image_size"]
    assert by_path["masks"].shape == (len(by_path["boxes"]), height, width) and by_path["masks"].dtype == torch.bool
    rgb = np.array(Image.open(path).convert("RGB"))
    _same(by_path, predictor(Image.open(path)))
    _same(by_path, predictor(rgb))
    _same(by_path, predictor(np.ascontiguousarray(rgb[:, :, ::-1]), format="BGR"))
    _same(by_path, predictor(torch.from_numpy(rgb).permute(2, 0, 1)))  # uint8 CHW
    _same(by_path, predictor(load_image(path)))  # float CHW in [0, 1]
    batch = predictor.predict_batch(val_images, batch_size=1)
    _same(by_path, batch[0])
    assert len(predictor.predict_batch(val_images, batch_size=3)) == len(val_images)
    assert (by_path["scores"] >= 0.05).all()
    assert (predictor.__class__.from_checkpoint(mask_checkpoint, device="cpu", score_threshold=0.5)(path)["scores"]
            >= 0.5).all()


def test_images_are_turned_upright_and_converted_not_refused(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert tuple(load_image(str(tmp_path / "rotated.jpg")).shape) == (3, 50, 30)
    assert tuple(load_image(Image.open(tmp_path / "rotated.jpg")).shape) == (3, 50, 30)
    for mode in ("L", "RGBA", "P", "CMYK", "LA", "1"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        image.convert(mode).save(path)
        assert tuple(load_image(str(path)).shape) == (3, 30, 50), mode
    grey16 = (rgb[..., 0].astype(np.uint16) * 257)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    pixels = load_image(str(tmp_path / "g16.png"))
    assert pixels.shape == (3, 30, 50) and pixels.max() <= 1 and pixels.max() > 0.9  # not clipped at 255 / 65535
    assert load_image(rgb[..., 0]).shape == (3, 30, 50)  # a grey array
    with pytest.raises(ValueError, match="channels"):
        load_image(np.zeros((30, 50, 2), np.uint8))
    with pytest.raises(ValueError, match="format"):
        load_image(rgb, format="RGBA")


def test_a_checkpoint_without_meta_reads_the_training_json_or_says_what_is_missing(datasets_root, tmp_path):
    cfg = _config("mask_rcnn_tiny_FPN_zenith_9min.yaml")
    old = _save_checkpoint(cfg, str(tmp_path / "old.pth"), with_meta=False)
    loaded = load_for_inference(old, device="cpu")  # the config names the training json, which is here
    assert loaded.metadata.thing_classes == metadata_from_cfg(cfg).thing_classes
    moved = cfg.clone()
    moved.DATASETS.REGISTER = [["gone_train", str(tmp_path / "no" / "train.json"), str(tmp_path / "no")]]
    moved.DATASETS.TRAIN = ("gone_train",)
    orphan = _save_checkpoint(cfg, str(tmp_path / "orphan.pth"), with_meta=False)
    state = torch.load(orphan, weights_only=True)
    state["config"] = moved.dump()
    torch.save(state, orphan)
    with pytest.raises(UserError, match=r"carries no categories .*training data .*cannot be read") as e:
        load_for_inference(orphan, device="cpu")
    assert "\n" not in str(e.value)


def _crafted_pickle(path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo crafted",))

    torch.save({"model": Payload()}, path)


def test_missing_crafted_and_foreign_weights_are_one_line_and_exit_2(datasets_root, mask_checkpoint, tmp_path,
                                                                       val_images, capsys):
    predict = load_tool("predict")
    keypoint = _save_checkpoint(_config("keypoint_rcnn_tiny_FPN_zenith_9min.yaml"), str(tmp_path / "kp.pth"))
    foreign = torch.load(keypoint, weights_only=True)
    mask_state = torch.load(mask_checkpoint, weights_only=True)
    foreign["config"], foreign["meta"] = mask_state["config"], mask_state["meta"]  # another model's weights
    torch.save(foreign, tmp_path / "foreign.pth")
    _crafted_pickle(tmp_path / "crafted.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bare.pth")
    cases = {
        str(tmp_path / "missing.pth"): "does not exist",
        str(tmp_path / "crafted.pth"): "could run code",
        str(tmp_path / "text.pth"): "damaged or not a torch file",
        str(tmp_path / "foreign.pth"): "does not fit the MaskRCNN",
        str(tmp_path / "bare.pth"): "carries no config",
    }
    for weights, message in cases.items():
        code = predict.main(["--weights", weights, "--input", val_images[0], "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (weights, err)
        assert weights in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_same_named_images_in_two_folders_keep_their_own_pictures(tmp_path):
    for folder in ("a", "b", "b/c"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "x.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    files = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a" / "x.jpg"),
                           str(tmp_path / "b" / "c" / "*.jpg")])
    assert [name for _, name in files] == ["x", "x-2", os.path.join("c", "x")]  # each file once, names apart
    with pytest.raises(UserError, match="does not exist"):
        expand_inputs([str(tmp_path / "nope")])
    with pytest.raises(UserError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.png")])


def test_predict_draws_each_image_skips_what_it_cannot_read_and_writes_a_coco_json(
        datasets_root, mask_checkpoint, val_images, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(val_images):
        shutil.copy(path, folder / ("sub" if i % 2 else "") / os.path.basename(path))
    shutil.copy(val_images[0], folder / "sub" / os.path.basename(val_images[0]))  # same name, other folder
    Image.open(val_images[0]).convert("RGBA").save(folder / "rgba.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "out"
    assert load_tool("predict").main(["--weights", mask_checkpoint, "--input", str(folder), "--output", str(out),
                                      "--score-threshold", "0.05", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: skipped") == 1 and "broken.jpg" in captured.err
    assert "skipped: 1 files" in captured.out
    pictures = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs
                      if f.endswith(".png"))
    assert len(pictures) == len(val_images) + 2  # every readable image, the same-named one too
    coco = COCO(str(out / "results.json"))  # a COCO tool reads it as a dataset
    assert len(coco.imgs) == len(val_images) + 2 and len(coco.anns) > 0
    state = torch.load(mask_checkpoint, weights_only=True)
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == \
        [(c["id"], c["name"]) for c in state["meta"]["categories"]]
    assert all(0.05 <= a["score"] <= 1 and "segmentation" in a for a in coco.anns.values())


def test_eval_coco_scores_predict_json_against_the_ground_truth_by_file_name(
        datasets_root, mask_checkpoint, val_images, tmp_path, capsys):
    predict, eval_coco = load_tool("predict"), load_tool("eval_coco")
    gt = get_detection_dataset("synthetic_shapes_val", _config("mask_rcnn_tiny_FPN_zenith_9min.yaml"), is_train=False).metadata.json_file
    out = tmp_path / "out"
    assert predict.main(["--weights", mask_checkpoint, "--input", *val_images, "--output", str(out),
                         "--score-threshold", "0.05"]) == 0
    capsys.readouterr()
    assert eval_coco.main(["--gt", gt, "--results", str(out / "results.json"), "--json-out",
                           str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    # An image the ground truth lacks: one line naming it.
    data = json.loads((out / "results.json").read_text())
    data["images"][0]["file_name"] = "elsewhere/unknown.jpg"
    (tmp_path / "other.json").write_text(json.dumps(data))
    assert eval_coco.main(["--gt", gt, "--results", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown.jpg matches no image" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_a_trained_checkpoint_copied_alone_predicts_and_evaluates_as_the_trainer_did(tiny_cfg, tmp_path):
    """Trained by the trainer, then copied into an empty folder whose datasets root is empty: the
    checkpoint names its classes; tools/predict.py at the evaluation's batch size reproduces the
    trainer's --eval-only AP through tools/eval_coco.py."""
    from zenith_det.engine import Trainer, default_setup

    cfg = tiny_cfg.clone()
    cfg.SOLVER.MAX_ITER = 4
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    val = get_detection_dataset("synthetic_shapes_val", cfg, is_train=False).metadata
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), alone / "model_final.pth")
    env = dict(os.environ, ZENITH_DATASETS=str(tmp_path / "no_datasets"))
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "predict.py"), "--weights", "model_final.pth",
                          "--input", val.image_root, "--output", "out", "--score-threshold", "0.05",
                          "--batch-size", str(cfg.TEST.IMS_PER_BATCH)],
                         cwd=alone, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "no_datasets").exists()  # nothing was generated or read from a datasets root
    # --eval-only from the checkpoint, its training json unknown here: the test json is registered.
    eval_cfg = [*SMALL, "TEST.IMS_PER_BATCH", str(cfg.TEST.IMS_PER_BATCH), "DATASETS.TRAIN", "('gone',)",
                "DATASETS.REGISTER", f"[['gone', '{tmp_path}/gone.json', '{tmp_path}'], "
                                     f"['val', '{val.json_file}', '{val.image_root}']]",
                "DATASETS.TEST", "('val',)", "MODEL.WEIGHTS", "model_final.pth", "OUTPUT_DIR", "eval"]
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config",
                          os.path.join(REPO, "configs", "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml"), "--eval-only", *eval_cfg],
                         cwd=alone, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    run_ap = subprocess.run([sys.executable, os.path.join(REPO, "tools", "eval_coco.py"), "--gt", val.json_file,
                             "--results", "out/results.json", "--json-out", "predict_ap.json"],
                            cwd=alone, capture_output=True, text=True, timeout=600)
    assert run_ap.returncode == 0, run_ap.stderr
    predicted = json.loads((alone / "predict_ap.json").read_text())
    bbox_row = next(line for line in run.stdout.splitlines() if line.strip().startswith("|  bbox"))
    # The same images in the same batches (file names sort as the ids do): the same AP, as printed.
    assert f"{predicted['bbox']['AP']:.3f}" in bbox_row, (predicted["bbox"], run.stdout)
