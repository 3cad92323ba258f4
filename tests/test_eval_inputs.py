"""Bad evaluation input is refused with one line naming the file, the entry and the field.

Everything here once went through silently (a NaN score changes AP), or ended
in a traceback inside pycocotools. A tiny ground truth keeps each case fast:
two images, a box-only category and a 'person' category with 3 keypoints.
"""
import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from zenith_det.errors import UserError
from zenith_det.evaluation import RESULTS_FILE, COCOEvaluator, evaluate_results_json, load_coco_gt, load_results
from zenith_det.evaluation.rle_check import first_bad_rle_string

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 40, 60  # image 1; image 2 is 50x30
BOX = [10.0, 5.0, 20.0, 16.0]  # x, y, w, h of the object in image 1


def _mask(h=H, w=W, box=BOX):
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    x, y, bw, bh = (int(v) for v in box)
    m[y:y + bh, x:x + bw] = 1
    return m


def _rle(m):
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _runs(m):
    """Uncompressed COCO counts: column-major runs, starting with background."""
    flat = np.asarray(m).reshape(-1, order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return [0] + runs if flat[0] else runs


def _encode_counts(counts):
    """pycocotools' rleToString (maskApi.c) in Python, for counts it would never make itself."""
    out = []
    for i, cnt in enumerate(counts):
        x = cnt - counts[i - 2] if i > 2 else cnt
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


POLY = [[10.0, 5.0, 30.0, 5.0, 30.0, 21.0, 10.0, 21.0]]
KPTS = [15.0, 10.0, 2.0, 20.0, 12.0, 2.0, 25.0, 15.0, 2.0]


def _gt():
    return {
        "images": [{"id": 1, "height": H, "width": W}, {"id": 2, "height": 50, "width": 30}],
        "categories": [{"id": 1, "name": "thing"},
                       {"id": 2, "name": "person", "keypoints": ["a", "b", "c"], "skeleton": []}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 320.0, "iscrowd": 0,
             "segmentation": POLY},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [2.0, 3.0, 20.0, 30.0], "area": 600.0, "iscrowd": 0,
             "segmentation": [[2.0, 3.0, 22.0, 3.0, 22.0, 33.0, 2.0, 33.0]], "keypoints": KPTS, "num_keypoints": 3},
        ],
    }


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    path.write_text(json.dumps(_gt()))
    return str(path)


def _good():
    return {"image_id": 1, "category_id": 1, "bbox": list(BOX), "score": 0.9, "segmentation": _rle(_mask())}


def _good_kp():
    return {"image_id": 2, "category_id": 2, "bbox": [2.0, 3.0, 20.0, 30.0], "score": 0.8, "keypoints": list(KPTS)}


def _error(gt_path, results, task):
    sigmas = [0.05] * 3 if task == "keypoints" else None  # one per keypoint of the gt's 'person'
    with pytest.raises(UserError) as info:
        evaluate_results_json(gt_path, results, task, kpt_oks_sigmas=sigmas, source="bad.json")
    message = str(info.value)
    assert "\n" not in message
    return message


# (task, field, bad value or DROP, words the message must have); entry 1 of [good, bad, good] is the bad one
DROP = object()
BAD_RESULTS = {
    "score NaN": ("bbox", "score", float("nan"), ["'score'", "nan", "finite"]),
    "score inf": ("bbox", "score", float("-inf"), ["'score'", "-inf"]),
    "score missing": ("bbox", "score", DROP, ["no 'score'"]),
    "score bool": ("bbox", "score", True, ["'score'", "true (a boolean)"]),
    "score string": ("bbox", "score", "0.9", ["'score'", "'0.9' (a string)"]),
    "score null": ("bbox", "score", None, ["'score'", "null"]),
    "bbox 3 numbers": ("bbox", "bbox", [1, 2, 3], ["'bbox'", "3 numbers", "[x, y, width, height]"]),
    "bbox string": ("bbox", "bbox", "1 2 3 4", ["'bbox'", "(a string)"]),
    "bbox NaN": ("bbox", "bbox", [1, 2, float("nan"), 4], ["'bbox'", "nan"]),
    "bbox bool": ("bbox", "bbox", [1, 2, True, 4], ["'bbox'", "true (a boolean)"]),
    "bbox negative width": ("bbox", "bbox", [1, 2, -3, 4], ["'bbox'", "negative"]),
    "bbox negative height": ("bbox", "bbox", [1, 2, 3, -4], ["'bbox'", "negative"]),
    "bbox missing": ("bbox", "bbox", DROP, ["no 'bbox'"]),
    "image_id string": ("bbox", "image_id", "1", ["'image_id'", "(a string)", "integer"]),
    "image_id float": ("bbox", "image_id", 1.0, ["'image_id'", "1.0", "integer"]),
    "image_id unknown": ("bbox", "image_id", 99, ["['image_id'] 99", "not an image of", "gt.json", "same dataset"]),
    "category_id unknown": ("bbox", "category_id", 5, ["['category_id'] 5", "not a category of", "[1, 2]"]),
    "category_id bool": ("bbox", "category_id", True, ["'category_id'", "(a boolean)"]),
    "category_id missing": ("bbox", "category_id", DROP, ["no 'category_id'"]),
    "rle of another size": ("segm", "segmentation", _rle(_mask(20, 20, [1, 1, 5, 5])),
                            ["'segmentation'", "size [20, 20]", "image 1 of", "[40, 60]"]),
    "rle garbage": ("segm", "segmentation", {"size": [H, W], "counts": "not an rle!"},
                    ["not a valid RLE", "character 't' is not one of '0'..'o'"]),
    "rle cut short": ("segm", "segmentation", {"size": [H, W], "counts": _rle(_mask())["counts"] + "b"},
                      ["not a valid RLE", "middle of a number"]),
    "rle too few pixels": ("segm", "segmentation", {"size": [H, W], "counts": _encode_counts([100, 20])},
                           ["not a valid RLE", "cover 120 pixels", "2400"]),
    "rle foreground past the end": ("segm", "segmentation", {"size": [H, W], "counts": _encode_counts([2390, 20])},
                                    ["not a valid RLE", "cover 2410 pixels"]),
    "rle negative run": ("segm", "segmentation", {"size": [H, W], "counts": _encode_counts([2000, -50, 450])},
                         ["not a valid RLE", "negative run"]),
    "rle counts a number": ("segm", "segmentation", {"size": [H, W], "counts": 7}, ["counts 7", "neither"]),
    "rle counts not ints": ("segm", "segmentation", {"size": [H, W], "counts": [100, "x"]}, ["counts", "neither"]),
    "rle run list too short": ("segm", "segmentation", {"size": [H, W], "counts": [100, 20]}, ["cover 120 pixels"]),
    "rle without size": ("segm", "segmentation", {"counts": _rle(_mask())["counts"]}, ["size null"]),
    "polygon flat": ("segm", "segmentation", POLY[0], ["flat list of numbers", "[[x1, y1"]),
    "polygon of 2 points": ("segm", "segmentation", [[1, 2, 3, 4]], ["polygon of 4 numbers", "at least 3 points"]),
    "polygon odd": ("segm", "segmentation", [[1, 2, 3, 4, 5, 6, 7]], ["polygon of 7 numbers"]),
    "polygon not numbers": ("segm", "segmentation", [[1, 2, 3, "4", 5, 6]], ["'4' (a string)"]),
    "polygon list empty": ("segm", "segmentation", [], ["empty list of polygons"]),
    "segmentation missing": ("segm", "segmentation", DROP, ["no 'segmentation'"]),
}
BAD_KEYPOINTS = {
    "keypoints of another count": ([1.0, 2.0, 1.0] * 2, ["['keypoints'] has 6 numbers", "3 keypoints", "9"]),
    "keypoints not triples": ([1.0] * 8, ["8 numbers, not a multiple of 3"]),
    "keypoints string": ([1.0, "2", 1.0] * 3, ["'2' (a string) at position 1"]),
    "keypoints NaN x": ([float("nan"), 2.0, 1.0] * 3, ["nan at position 0"]),
    "keypoints null": (None, ["['keypoints'] is null"]),
}


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_bad_result_field_is_named(gt_path, case):
    task, field, value, words = BAD_RESULTS[case]
    bad = _good()
    if value is DROP:
        del bad[field]
    else:
        bad[field] = copy.deepcopy(value)
    message = _error(gt_path, [_good(), bad, _good()], task)
    assert message.startswith("bad.json: results[1]"), message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("case", list(BAD_KEYPOINTS))
def test_bad_keypoints_are_named(gt_path, case):
    value, words = BAD_KEYPOINTS[case]
    bad = dict(_good_kp(), keypoints=value)
    message = _error(gt_path, [_good_kp(), bad], "keypoints")
    assert message.startswith("bad.json: results[1]['keypoints']"), message
    for word in words:
        assert word in message, (word, message)


def test_the_first_bad_entry_is_named(gt_path):
    results = [_good() for _ in range(6)]
    results[4]["score"] = float("nan")
    results[2]["bbox"] = [0, 0, -1, 1]  # another field, earlier entry
    results[5]["image_id"] = 77
    assert "results[2]['bbox']" in _error(gt_path, results, "bbox")
    results[2]["bbox"] = list(BOX)
    assert "results[4]['score']" in _error(gt_path, results, "bbox")
    results[4]["score"] = 0.5
    assert "results[5]['image_id'] 77" in _error(gt_path, results, "bbox")


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_polygon_and_run_list_masks_score_as_their_rle(gt_path, backend):
    """Both backends' loadRes fail on these valid COCO forms; they are converted, not refused."""
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(POLY, H, W)))  # as COCOeval rasterises the gt
    as_rle = [dict(_good(), segmentation=_rle(mask))]
    as_poly = [dict(_good(), segmentation=copy.deepcopy(POLY))]
    as_runs = [dict(_good(), segmentation={"size": [H, W], "counts": _runs(mask)})]
    expected = evaluate_results_json(gt_path, as_rle, "segm", backend)
    assert expected["AP-thing"] == pytest.approx(100.0)  # (no 'person' detections: AP is 50)
    for results in (as_poly, as_runs):
        assert json.dumps(evaluate_results_json(gt_path, results, "segm", backend)) == json.dumps(expected)  # NaN too


def test_unusual_but_valid_results_are_accepted(gt_path):
    # an int score, a zero-size box, NaN in the keypoint score slot (COCOeval reads x and y only)
    ok = [dict(_good(), score=1), dict(_good(), bbox=[1, 1, 0, 0], score=0.1)]
    assert evaluate_results_json(gt_path, ok, "bbox")["AP-thing"] == pytest.approx(100.0)
    kp = dict(_good_kp(), keypoints=[v if i % 3 < 2 else float("nan") for i, v in enumerate(KPTS)])
    assert evaluate_results_json(gt_path, [kp], "keypoints", kpt_oks_sigmas=[0.05] * 3)["AP"] == pytest.approx(100.0)


def test_nan_score_from_the_model_names_the_written_file(gt_path, tmp_path):
    ev = COCOEvaluator(gt_path, {1: 1, 2: 2}, tasks=["bbox"], output_dir=str(tmp_path))
    out = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 21.0], [0.0, 0.0, 5.0, 5.0]]),
           "scores": torch.tensor([0.9, float("nan")]), "labels": torch.tensor([1, 1])}
    ev.process([1], [out])
    with pytest.raises(UserError, match=r"coco_instances_results\.json: results\[1\]\['score'\] is nan"):
        ev.evaluate()


def test_results_file_is_written_through_a_private_temporary(gt_path, tmp_path):
    """The results once went through `.tmp_<pid>_<name>`: a link planted there redirected the write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / f".tmp_{os.getpid()}_{RESULTS_FILE}")
    ev = COCOEvaluator(gt_path, {1: 1, 2: 2}, tasks=["bbox"], output_dir=str(out))
    ev.process([1], [{"boxes": torch.tensor([[10.0, 5.0, 30.0, 21.0]]), "scores": torch.tensor([0.9]),
                      "labels": torch.tensor([1])}])
    assert ev.evaluate()["bbox"]["AP-thing"] == pytest.approx(100.0)
    assert victim.read_text() == "keep me"
    assert len(json.loads((out / RESULTS_FILE).read_text())) == 1
    assert sorted(os.listdir(out)) == sorted([RESULTS_FILE, f".tmp_{os.getpid()}_{RESULTS_FILE}"])


# ----------------------------------------------------------------------------- ground truth


def _without(field, value=DROP):
    gt = _gt()
    if value is DROP:
        del gt[field]
    else:
        gt[field] = value
    return gt


def _with_polygon(index, segmentation):
    gt = _gt()
    gt["annotations"][index]["segmentation"] = segmentation
    return gt


BAD_GT = {
    "no categories": (_without("categories"), ["no 'categories'"]),
    "empty categories": (_without("categories", []), ["'categories' is empty"]),
    "no images": (_without("images"), ["no 'images'"]),
    "no annotations": (_without("annotations"), ["no 'annotations'", "'annotations': []"]),
    "annotations not a list": (_without("annotations", {"1": {}}), ["'annotations' is an object, not a list"]),
    "a list": ([_good()], ["json object with 'images'", "looks like a results file"]),
    "string image id": (dict(_gt(), images=[{"id": "1", "height": H, "width": W}]),
                        ["images[0] has id '1' (a string)"]),
    "image without id": (dict(_gt(), images=[{"height": H, "width": W}]), ["images[0] has no 'id'"]),
    "repeated category id": (dict(_gt(), categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]),
                             ["categories[1] has id 1, as categories[0] has", "unique"]),
    "polygon point at 1e8": (_with_polygon(1, [[2.0, 3.0, 1e8, 3.0, 22.0, 33.0]]),
                             ["annotations[1] (id 2) has a 'segmentation' point (100000000, 3) far outside its 30x50 image",
                              "within 1000 px of the image (x in [-1000, 1030], y in [-1000, 1050] here)"]),
    "polygon point at -1e12": (_with_polygon(0, [POLY[0], [10.0, -1e12, 30.0, 5.0, 30.0, 21.0]]),
                               ["annotations[0] (id 1) has a 'segmentation' point (10, -1e+12) far outside its 60x40"]),
    "polygon point NaN": (_with_polygon(0, [[10.0, 5.0, float("nan"), 5.0, 30.0, 21.0]]), ["point (nan, 5)"]),
    "polygon word": (_with_polygon(0, [[10.0, 5.0, "far", 5.0, 30.0, 21.0]]),
                     ["annotations[0] (id 1) has 'far' (a string) in its 'segmentation'", "numbers"]),
}


@pytest.mark.parametrize("case", list(BAD_GT))
def test_bad_ground_truth_is_named(tmp_path, case):
    dataset, words = BAD_GT[case]
    path = tmp_path / "bad_gt.json"
    path.write_text(json.dumps(dataset))
    sources = [(str(path), str(path))]
    if isinstance(dataset, dict):  # in memory, a list is a programming error (TypeError), not a file's
        sources.append((copy.deepcopy(dataset), "the ground truth"))
    for source, name in sources:
        with pytest.raises(UserError) as info:
            load_coco_gt(source)
        message = str(info.value)
        assert message.startswith(f"{name}: ") and "\n" not in message, message
        for word in words:
            assert word in message, (word, message)


def test_masks_need_the_ground_truth_image_size(tmp_path):
    gt = _gt()
    del gt["images"][1]["height"]
    message = _error(gt, [_good()], "segm")
    assert message.startswith("the ground truth: images[1] (id 2) needs positive integer 'height'"), message


# ----------------------------------------------------------------------------- files


BAD_FILES = {
    "not json": (b'[{"image_id": 1,', ["not valid json", "line 1"]),
    "not UTF-8": (b'[{"image_id": 1, "x": "\xff"}]', ["not UTF-8", "0xff"]),
    "empty": (b"", ["is empty", "[] means no detections"]),
    "null": (b"null", ["json list of detections", "holds null"]),
    "an object": (json.dumps(_gt()).encode(), ["holds an object", "looks like a ground truth"]),
    "numbers": (b"[1, 2]", ["results[0] is a number, not a detection object"]),
    "gzip": (b"\x1f\x8b\x08\x00", ["gzip-compressed"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_results_file_is_named(tmp_path, case):
    content, words = BAD_FILES[case]
    path = tmp_path / "res.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_results(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_bad_ground_truth_file_is_named(tmp_path):
    path = tmp_path / "gt.json"
    for content, word in ((b"\xfe\xff{}", "not UTF-8"), (b"{'images': []}", "not valid json"), (b"", "is empty")):
        path.write_bytes(content)
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: the ground-truth json .*{word}"):
            load_coco_gt(str(path))


# ----------------------------------------------------------------------------- the CLI


def _eval_coco(*args):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "eval_coco.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _cli_case(tmp_path, name, gt, results_text):
    gt_file, res_file = tmp_path / f"{name}_gt.json", tmp_path / f"{name}_res.json"
    gt_file.write_text(json.dumps(gt))
    res_file.write_bytes(results_text if isinstance(results_text, bytes) else results_text.encode())
    return str(gt_file), str(res_file)


@pytest.mark.slow
def test_eval_coco_refuses_bad_input_in_one_line(tmp_path):
    bad_rle = [_good(), dict(_good(), segmentation=_rle(_mask(20, 20, [1, 1, 5, 5])))]
    cases = [
        # json.dumps writes NaN as the literal Python's json reads back
        ("nan", _gt(), json.dumps([_good(), _good(), dict(_good(), score=float("nan"))]),
         ["nan_res.json", "results[2]['score'] is nan"]),
        ("rle", _gt(), json.dumps(bad_rle), ["rle_res.json", "results[1]['segmentation'] has size [20, 20]"]),
        ("utf8", _gt(), b"\xff[]", ["utf8_res.json", "not UTF-8"]),
        ("nocats", _without("categories"), json.dumps([_good()]), ["nocats_gt.json", "no 'categories'"]),
    ]
    for name, gt, results, words in cases:
        gt_file, res_file = _cli_case(tmp_path, name, gt, results)
        proc = _eval_coco("--gt", gt_file, "--results", res_file)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, proc.returncode, proc.stderr[-2000:])
        for word in words:
            assert word in lines[0], (name, word, lines[0])


@pytest.mark.slow
@pytest.mark.parametrize("value", [1e8, 1e12])
def test_eval_coco_refuses_absurd_polygon_coordinates_in_one_line(tmp_path, value):
    """pycocotools' rasteriser dies by SIGSEGV on a polygon point at 1e12 px, and at 1e8 px asks for
    ~16 GB first. Run as a user runs it (a subprocess: without the check the crash would end pytest)."""
    absurd = [[10.0, 5.0, value, 5.0, 30.0, 21.0, 10.0, 21.0]]
    gt = _gt()
    gt["annotations"][0]["segmentation"] = absurd
    point = f"point ({value:.10g}, 5) far outside its 60x40 image"
    cases = [
        ("gt", gt, json.dumps([_good()]), ["gt_gt.json: annotations[0] (id 1) has a 'segmentation' " + point]),
        ("res", _gt(), json.dumps([_good(), dict(_good(), segmentation=absurd)]),
         ["res_res.json: results[1]['segmentation'] has a " + point, "(image 1)"]),
    ]
    for name, gt, results, words in cases:
        gt_file, res_file = _cli_case(tmp_path, name, gt, results)
        proc = _eval_coco("--gt", gt_file, "--results", res_file)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, proc.returncode, proc.stderr[-2000:])
        for word in words + ["within 1000 px of the image", "fix the coordinates"]:
            assert word in lines[0], (name, word, lines[0])


def test_polygons_a_little_outside_the_image_are_evaluated():
    """COCO has polygon points a pixel or two past the border: in the ground truth and in results,
    they score as the mask pycocotools makes of them."""
    near = [[-1.5, -2.0, 61.5, -2.0, 62.0, 41.5, -2.0, 42.0]]  # image 1 is 60x40
    gt = _gt()
    gt["annotations"][0]["segmentation"] = near
    result = dict(_good(), segmentation=near)
    assert evaluate_results_json(gt, [result], "segm")["AP-thing"] == pytest.approx(100)
    rle = mask_util.merge(mask_util.frPyObjects(near, H, W))
    rle["counts"] = rle["counts"].decode("ascii")
    assert evaluate_results_json(gt, [dict(result, segmentation=rle)], "segm")["AP-thing"] == pytest.approx(100)


def test_eval_coco_names_the_result_without_the_task_field(gt_path, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_coco", os.path.join(REPO, "tools", "eval_coco.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = [_good(), _good()]
    del results[1]["segmentation"]
    res_file = tmp_path / "res.json"
    res_file.write_text(json.dumps(results))
    assert tool.main(["--gt", gt_path, "--results", str(res_file), "--task", "segm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{res_file}: results[1] has no 'segmentation'" in err[0], err


@pytest.mark.parametrize("max_dets", ["0", "-1"])
def test_eval_coco_refuses_max_dets_below_one(gt_path, tmp_path, capsys, max_dets):
    """0 or -1 detections per image asked COCOeval another question and printed its AP with exit 0."""
    from conftest import load_tool

    res_file = tmp_path / "res.json"
    res_file.write_text(json.dumps([_good()]))
    with pytest.raises(SystemExit) as e:
        load_tool("eval_coco").main(["--gt", gt_path, "--results", str(res_file), "--max-dets", max_dets])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--max-dets" in err[0], err


# ----------------------------------------------------------------------------- the RLE reader


def test_rle_check_reads_what_pycocotools_writes():
    rng = np.random.default_rng(0)
    strings, pixels, masks = [], [], []
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        m[: int(rng.integers(0, h + 1))] = rng.integers(0, 2)  # long runs: numbers of several characters
        strings.append(_rle(m)["counts"])
        pixels.append(h * w)
        masks.append(m)
        assert _encode_counts(_runs(m)) == strings[-1]  # the test's encoder is pycocotools'
    many = strings * 40  # several chunks
    assert first_bad_rle_string(many, pixels * 40) is None
    broken = list(many)
    broken[7001] = broken[7001][:-1] + "z"
    assert first_bad_rle_string(broken, pixels * 40) == (7001, "character 'z' is not one of '0'..'o'")
    # counts of up to 6 characters each, and their sums
    big = [2 ** 27, 5, 2 ** 20, 3]
    assert first_bad_rle_string([_encode_counts(big)], [sum(big)]) is None
    assert first_bad_rle_string([_encode_counts(big)], [sum(big) - 1])[1].startswith(f"its runs cover {sum(big)}")
    assert first_bad_rle_string(["", "1"], [0, 1]) is None
    assert "too long" in first_bad_rle_string(["ooooooo0"], [1])[1]


def test_ground_truth_without_iscrowd_or_area_takes_the_training_defaults(tmp_path):
    """Training reads a json without 'iscrowd'/'area' (an object; the box's area): evaluating it must
    give the same AP as the json with those values written out, not a KeyError inside COCOeval."""
    full = _gt()
    for ann in full["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    sparse = copy.deepcopy(full)
    for ann in sparse["annotations"]:
        del ann["iscrowd"], ann["area"]
    expected = evaluate_results_json(full, [_good()], "bbox")
    np.testing.assert_equal(evaluate_results_json(sparse, [_good()], "bbox"), expected)  # NaN == NaN here
    del sparse["annotations"][0]["bbox"]
    with pytest.raises(UserError, match=r"annotations\[0\] has no 'area' and no box"):
        evaluate_results_json(sparse, [_good()], "bbox")
