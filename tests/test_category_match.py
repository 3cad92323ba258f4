"""A model evaluated on test data whose categories disagree with its training data's (TEST.CATEGORY_MATCH).

Taking the test json's categories by position would score the same ids under other
names, or other ids under the same names, as the AP of another question without a word.
"exact" refuses any disagreement in one line naming both jsons, before inference;
"name" maps labels by name, logs the table and writes the test json's ids.
"""
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import FAST_CLI, SYNTHETIC_CONFIG, load_tool
from zenith_det.data import generate_synthetic_coco
from zenith_det.data.categories import match_categories
from zenith_det.data.coco import _metadata
from zenith_det.engine import defaults as engine_defaults
from zenith_det.errors import UserError
from zenith_det.evaluation import RESULTS_FILE, COCOEvaluator
from zenith_det.evaluation.conversion import coco_result_dicts

SHAPES = [(2, "ellipse"), (5, "triangle"), (9, "rectangle"), (13, "star")]  # synthetic.SHAPE_CATEGORIES


def _meta(path, categories, keypoints=None):
    cats = [dict({"id": i, "name": n}, **({"keypoints": keypoints} if keypoints else {})) for i, n in categories]
    return _metadata(SimpleNamespace(dataset={"categories": cats}), path, "images")


# ----------------------------------------------------------------------------- the matching itself


def test_exact_accepts_the_training_categories_in_any_json_order():
    match = match_categories(_meta("train.json", SHAPES), _meta("test.json", SHAPES[::-1]))
    assert match.label_to_category_id == {1: 2, 2: 5, 3: 9, 4: 13} and match.table == "" and not match.dropped


@pytest.mark.parametrize("categories, words", [
    ([(2, "ellipse"), (5, "circle"), (9, "rectangle"), (13, "star")],
     ["category id 5 is 'triangle' in the training data but 'circle' in the test data"]),
    ([(2, "ellipse"), (6, "triangle"), (9, "rectangle"), (13, "star")],
     ["category id 5 ('triangle') is in the training data but not in the test data"]),
    (SHAPES + [(20, "hexagon")], ["category id 20 ('hexagon') is in the test data but not in the training data"]),
])
def test_exact_refuses_any_disagreement_naming_both_jsons(categories, words):
    with pytest.raises(UserError) as e:
        match_categories(_meta("/d/train.json", SHAPES), _meta("/d/test.json", categories), "exact", test_name="val")
    message = str(e.value)
    assert "\n" not in message
    for word in ["/d/train.json", "DATASETS.TEST val (/d/test.json)", "TEST.CATEGORY_MATCH name", *words]:
        assert word in message, message


def test_keypoint_names_must_agree_for_keypoint_models_only():
    names = ["nose", "left_eye", "right_eye"]
    model, test = _meta("a.json", [(1, "person")], names), _meta("b.json", [(1, "person")], ["nose", "right_eye", "left_eye"])
    for mode in ("exact", "name"):
        with pytest.raises(UserError, match="keypoint 2 is 'left_eye' in the training data but 'right_eye'"):
            match_categories(model, test, mode)
        assert match_categories(model, test, mode, keypoints=False).label_to_category_id == {1: 1}
    with pytest.raises(UserError, match="3 keypoints but the test data 0"):
        match_categories(model, _meta("c.json", [(1, "person")]))


def test_name_maps_labels_to_the_test_ids_and_drops_missing_categories():
    test = _meta("test.json", [(40, "ellipse"), (30, "triangle"), (20, "rectangle")])
    match = match_categories(_meta("train.json", SHAPES), test, "name")
    assert match.label_to_category_id == {1: 40, 2: 30, 3: 20, 4: None}
    assert match.dropped == [(4, 13, "star")]
    lines = match.table.splitlines()
    assert "test.json" in lines[0] and "train.json" in lines[0] and len(lines) == 6
    assert lines[2].split() == ["1", "2", "ellipse", "40"] and lines[5].split()[:4] == ["4", "13", "star", "-"]


@pytest.mark.parametrize("model, test, words", [
    (SHAPES, SHAPES + [(20, "hexagon")], ["'hexagon' (id 20) is not in the training data", "train.json", "test.json"]),
    (SHAPES, [(2, "ellipse"), (5, "ellipse")], ["'ellipse' is both id 2 and id 5 in the test data (test.json)"]),
    (SHAPES + [(20, "star")], SHAPES, ["'star' is both id 13 and id 20 in the training data (train.json)"]),
])
def test_name_refuses_what_it_cannot_map(model, test, words):
    with pytest.raises(UserError) as e:
        match_categories(_meta("train.json", model), _meta("test.json", test), "name")
    for word in words:
        assert word in str(e.value), str(e.value)


def test_unknown_mode_is_named():
    with pytest.raises(UserError, match="TEST.CATEGORY_MATCH is 'id'; use one of exact, name"):
        match_categories(_meta("a.json", SHAPES), _meta("b.json", SHAPES), "id")


def test_labels_mapped_to_none_are_dropped_with_their_masks_and_keypoints():
    output = {
        "boxes": torch.tensor([[0., 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]]), "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 2, 1]), "keypoints": torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(3, 2, 3),
    }
    rles = [{"size": [8, 8], "counts": str(i)} for i in range(3)]
    results = coco_result_dicts(output, 7, {1: 40, 2: None}, rles)
    assert [r["category_id"] for r in results] == [40, 40]
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.7])
    assert [r["segmentation"]["counts"] for r in results] == ["0", "2"]
    assert [r["keypoints"][0] for r in results] == [0.0, 12.0]
    with pytest.raises(UserError, match="predicted label 2"):
        coco_result_dicts(output, 7, {1: 40})  # a label the mapping lacks: the model does not fit
    evaluator = COCOEvaluator({"images": [], "annotations": [], "categories": []}, {1: 40, 2: None})
    evaluator.process([7], [output])
    assert [r["category_id"] for r in evaluator._predictions[0]["instances"]] == [40, 40]


# ----------------------------------------------------------------------------- eval_coco mode B, train_net --eval-only

RENAMED = {"ellipse": "triangle", "triangle": "rectangle", "rectangle": "star", "star": "ellipse"}  # same ids
RENUMBERED = {2: 40, 5: 30, 9: 20, 13: 10}  # same names; by id, label 1 (ellipse) would become 'star'


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small training json, a test json and variants of it, and weights of a model for the training json."""
    root = tmp_path_factory.mktemp("category_match")
    train_json, train_images = generate_synthetic_coco(str(root), "shapes", "train", 2, seed=5)
    test_json, test_images = generate_synthetic_coco(str(root), "shapes", "val", 3, seed=5)
    base = json.load(open(test_json))

    def variant(name, categories, annotations=None):
        d = dict(base, categories=categories, annotations=base["annotations"] if annotations is None else annotations)
        path = os.path.join(root, "annotations", f"{name}.json")
        json.dump(d, open(path, "w"))
        return path

    cats = base["categories"]
    jsons = {
        "same": variant("same", cats),
        "renamed": variant("renamed", [dict(c, name=RENAMED[c["name"]]) for c in cats]),
        "renumbered": variant("renumbered", [dict(c, id=RENUMBERED[c["id"]]) for c in cats],
                              [dict(a, category_id=RENUMBERED[a["category_id"]]) for a in base["annotations"]]),
    }
    register = [["cm_train", train_json, train_images]] + [[f"cm_{k}", v, test_images] for k, v in jsons.items()]
    overrides = ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "FasterRCNN", "INPUT.MIN_SIZE_TEST", "96",
                 "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "TEST.DETECTIONS_PER_IMAGE", "30",
                 "DATASETS.REGISTER", repr(register), "DATASETS.TRAIN", "('cm_train',)"]
    from zenith_det.config import load_config
    from zenith_det.modeling import build_model
    torch.manual_seed(0)
    weights = str(root / "w.pth")
    model = build_model(load_config(SYNTHETIC_CONFIG, overrides), SimpleNamespace(num_classes=4, num_keypoints=0))
    torch.save(model.state_dict(), weights)
    return SimpleNamespace(train_json=train_json, jsons=jsons, overrides=overrides, weights=weights)


def _eval_coco(data, tmp_path, capsys, test, *extra):
    capsys.readouterr()
    out = tmp_path / f"run_{test}"
    code = load_tool("eval_coco").main([
        "--config", SYNTHETIC_CONFIG, "--json-out", str(tmp_path / f"{test}.json"), *data.overrides,
        "DATASETS.TEST", f"('cm_{test}',)", "MODEL.WEIGHTS", data.weights, "OUTPUT_DIR", str(out), *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err, out / "inference" / RESULTS_FILE


def _assert_refused(code, err, data, test, *words):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in [data.train_json, data.jsons[test], "TEST.CATEGORY_MATCH", *words]:
        assert word in err[0], err[0]


@pytest.mark.parametrize("test, words", [
    ("renamed", ["category id 2 is 'ellipse' in the training data but 'triangle' in the test data"]),
    ("renumbered", ["category id 2 ('ellipse') is in the training data but not in the test data"]),
])
def test_eval_coco_refuses_other_categories_before_inference(data, tmp_path, capsys, monkeypatch, test, words):
    def no_inference(*args):
        raise AssertionError("inference ran before the categories were checked")

    monkeypatch.setattr(engine_defaults, "inference_on_dataset", no_inference)
    code, err, results = _eval_coco(data, tmp_path, capsys, test)
    _assert_refused(code, err, data, test, *words)
    assert not results.exists()


def test_every_test_set_is_checked_before_the_first_inference(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine_defaults, "inference_on_dataset", lambda *a: pytest.fail("inference ran"))
    capsys.readouterr()
    code = load_tool("eval_coco").main([
        "--config", SYNTHETIC_CONFIG, *data.overrides, "DATASETS.TEST", "('cm_same', 'cm_renamed')",
        "MODEL.WEIGHTS", data.weights, "OUTPUT_DIR", str(tmp_path / "run")])
    _assert_refused(code, [line for line in capsys.readouterr().err.splitlines() if line.strip()], data, "renamed")


def test_train_net_eval_only_refuses_other_categories(data, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "out"
    code = load_tool("train_net").cli([
        "--config", SYNTHETIC_CONFIG, *FAST_CLI, *data.overrides, "--eval-only", "DATASETS.TEST", "('cm_renamed',)",
        "MODEL.WEIGHTS", data.weights, "OUTPUT_DIR", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    _assert_refused(code, err, data, "renamed", "'ellipse' in the training data but 'triangle' in the test data")
    assert not (out / "inference" / RESULTS_FILE).exists()


def test_name_match_evaluates_other_ids_as_the_same_categories(data, tmp_path, capsys, caplog):
    """The same detections, scored against the same objects: ids follow the names, the AP is unchanged."""
    code, err, same_file = _eval_coco(data, tmp_path, capsys, "same")  # identical categories: accepted, as before
    assert code == 0, err
    with caplog.at_level(logging.INFO, logger="zenith_det"):
        code, err, renumbered_file = _eval_coco(data, tmp_path, capsys, "renumbered", "TEST.CATEGORY_MATCH", "name")
    assert code == 0, err
    table = next(r.getMessage() for r in caplog.records if "mapped by name" in r.getMessage())
    assert data.jsons["renumbered"] in table and data.train_json in table
    assert ["1", "2", "ellipse", "40"] in [line.split() for line in table.splitlines()]
    same, renumbered = json.load(open(same_file)), json.load(open(renumbered_file))
    assert same and len(same) == len(renumbered)
    assert [RENUMBERED[r["category_id"]] for r in same] == [r["category_id"] for r in renumbered]
    assert torch.allclose(torch.tensor([r["bbox"] for r in same]), torch.tensor([r["bbox"] for r in renumbered]))
    metrics = [json.load(open(tmp_path / f"{t}.json")) for t in ("same", "renumbered")]
    assert metrics[0]["bbox"]["AP"] == pytest.approx(metrics[1]["bbox"]["AP"])


def test_training_refuses_test_data_of_other_categories_before_the_first_iteration(data, tmp_path, capsys):
    """Not after TEST.EVAL_PERIOD iterations, at the first evaluation: before anything is trained or written."""
    capsys.readouterr()
    out = tmp_path / "out"
    code = load_tool("train_net").cli([
        "--config", SYNTHETIC_CONFIG, *FAST_CLI, *data.overrides, "DATASETS.TEST", "('cm_renamed',)",
        "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    _assert_refused(code, err, data, "renamed", "'ellipse' in the training data but 'triangle' in the test data")
    assert not {"config.yaml", "metrics.json", "last_checkpoint"} & set(os.listdir(out))
