"""The configs' layout, as detectron2 lays its out: a folder per family (configs/COCO-InstanceSegmentation,
configs/COCO-Keypoints, configs/synthetic, configs/compare, configs/detectron2, configs/detectron2/synthetic),
bases that inherit (configs/Base-RCNN-FPN.yaml holds the COCO recipe; COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml
starts from it with `_BASE_: "../Base-RCNN-FPN.yaml"`, as detectron2's keypoint base does; compare/Base-Race.yaml
starts from synthetic/Base-Synthetic.yaml), and short leaves whose `_BASE_` is a Base beside them or one folder
up. So a leaf reads as "the family's recipe, plus these few values", and a base states only what differs
from the base it starts from.

configs/compare/suites/ holds suite files (lists of arms), not configs. A symlink is an alias of a leaf
(configs/mask_rcnn_zenith.yaml, the documented entry point), not a config of its own.
"""
import os
import re

import pytest
import yaml

from conftest import REPO
from zenith_det.config import load_config
from zenith_det.errors import UserError

CONFIGS = os.path.join(REPO, "configs")
SUITES = os.path.join(CONFIGS, "compare", "suites")
DETECTRON2 = os.path.join(CONFIGS, "detectron2")
ENTRY_POINT = os.path.join(CONFIGS, "mask_rcnn_zenith.yaml")

# A leaf sets what makes it this run on top of its Base: optimizer, schedule, data, device, output.
# Twenty values hold every leaf here; a file that needs more restates a recipe, which belongs in a Base.
MAX_LEAF_VALUES = 20


def _yaml_files():
    out = []
    for folder, dirs, files in os.walk(CONFIGS):
        dirs[:] = sorted(d for d in dirs if os.path.join(folder, d) != SUITES)
        out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".yaml")]
    return out


ALL = _yaml_files()
FILES = [p for p in ALL if not os.path.islink(p)]
ALIASES = [p for p in ALL if os.path.islink(p)]
LEAVES = [p for p in FILES if not os.path.basename(p).startswith("Base-")]
BASES = [p for p in FILES if os.path.basename(p).startswith("Base-")]
FAMILIES = sorted({os.path.dirname(p) for p in FILES})


def _rel(path):
    return os.path.relpath(path, CONFIGS)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _values(node):
    """How many values a YAML mapping sets (a list or tuple counts as one value)."""
    return sum(_values(v) if isinstance(v, dict) else 1 for v in node.values())


def test_the_configs_are_found():
    assert len(LEAVES) >= 20 and len(FAMILIES) >= 5 and ENTRY_POINT in ALIASES


@pytest.mark.parametrize("path", [p for p in ALL if not p.startswith(DETECTRON2 + os.sep)], ids=_rel)
def test_every_config_loads(path):
    load_config(path)


@pytest.mark.parametrize("path", LEAVES, ids=_rel)
def test_a_leaf_bases_on_a_base_beside_it_or_one_folder_up(path):
    base = _read(path).get("_BASE_")
    assert isinstance(base, str), f"{_rel(path)}: a leaf names a Base-*.yaml as _BASE_"
    assert os.path.basename(base).startswith("Base-") and os.path.dirname(base) in ("", ".."), \
        f"{_rel(path)}: _BASE_ {base!r} is not a Base-*.yaml beside it or one folder up (no leaf as a base)"
    assert os.path.isfile(os.path.join(os.path.dirname(path), base)), f"{_rel(path)}: _BASE_ {base} does not exist"


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", [p for p in BASES if "_BASE_" in _read(p)], ids=_rel)
def test_a_base_states_only_what_differs_from_the_base_it_starts_from(path):
    own = _read(path)
    parent = load_config(os.path.join(os.path.dirname(path), own.pop("_BASE_")))
    merged = _flat(yaml.safe_load(parent.dump()))
    mine = _flat(yaml.safe_load(load_config(path).dump()))
    restated = [key for key in _flat(own) if merged.get(key) == mine.get(key)]
    assert not restated, f"{_rel(path)} restates what its _BASE_ already sets: {restated}"


def test_family_bases_inherit_instead_of_copying():
    keypoint = _read(os.path.join(CONFIGS, "COCO-Keypoints", "Base-Keypoint-RCNN-FPN.yaml"))
    assert keypoint["_BASE_"] == "../Base-RCNN-FPN.yaml"
    assert _read(os.path.join(CONFIGS, "compare", "Base-Race.yaml"))["_BASE_"] == "../synthetic/Base-Synthetic.yaml"


@pytest.mark.parametrize("folder", FAMILIES, ids=_rel)
def test_each_family_has_at_most_one_base(folder):
    bases = [p for p in BASES if os.path.dirname(p) == folder]
    assert len(bases) <= 1, f"{_rel(folder)}: {len(bases)} Base-*.yaml files; a family has at most one"


@pytest.mark.parametrize("path", LEAVES, ids=_rel)
def test_leaves_are_short(path):
    loaded = _read(path)
    loaded.pop("_BASE_", None)
    n = _values(loaded)
    assert n <= MAX_LEAF_VALUES, f"{_rel(path)} sets {n} values; move what its family shares into the Base"


@pytest.mark.parametrize("path", ALIASES, ids=_rel)
def test_an_alias_points_at_a_leaf_and_means_the_same(path):
    real = os.path.realpath(path)
    assert real in [os.path.realpath(p) for p in LEAVES], f"{_rel(path)} -> {real}: not a leaf under configs/"
    assert load_config(path).dump() == load_config(real).dump()


def test_the_documented_entry_point_is_the_coco_zenith_leaf():
    target = os.path.join(CONFIGS, "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_zenith_24h.yaml")
    assert os.path.realpath(ENTRY_POINT) == os.path.realpath(target)
    cfg = load_config(ENTRY_POINT)
    assert cfg.SOLVER.OPTIMIZER == "ZENITH" and cfg.MODEL.META_ARCHITECTURE == "MaskRCNN"


def test_a_symlinked_config_finds_its_base_beside_the_real_file(tmp_path):
    real, elsewhere = tmp_path / "family", tmp_path / "elsewhere"
    real.mkdir(), elsewhere.mkdir()
    (real / "Base-X.yaml").write_text("SOLVER:\n  MAX_ITER: 7\n")
    (real / "leaf.yaml").write_text("_BASE_: Base-X.yaml\nSOLVER:\n  BASE_LR: 0.5\n")
    (elsewhere / "alias.yaml").symlink_to(real / "leaf.yaml")
    cfg = load_config(str(elsewhere / "alias.yaml"))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.SOLVER.BASE_LR == 0.5


@pytest.mark.parametrize("key, value, words", [
    ("SOLVER.BASE_LR", "1e400", "finite"),  # YAML reads 1e400 as inf: it trained, skipped every step, exit 0
    ("SOLVER.MOMENTUM", "1.5", "[0, 1)"),
    ("SOLVER.GAMMA", "2.0", "[0, 1]"),
    ("SOLVER.STEPS", "('60000', '80000')", "increasing whole iteration numbers"),
    ("SOLVER.STEPS", "(80000, 60000)", "increasing whole iteration numbers"),
    ("TEST.EVAL_PERIOD_MINUTES", "1e400", "finite"),
])
def test_values_a_run_cannot_use_are_one_line_naming_the_key(key, value, words):
    with pytest.raises(UserError) as e:
        load_config(os.path.join(CONFIGS, "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml"), [key, value])
    assert key in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_a_config_too_large_to_be_settings_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    import zenith_det.config as config_module

    big = tmp_path / "big.yaml"
    big.write_text("SOLVER:\n  STEPS: [" + ", ".join(["1"] * 400_000) + "]\n")  # about 1.2 MB
    monkeypatch.setattr(config_module.yaml, "safe_load", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(UserError, match=r"big.yaml: 1\.1 MiB is too large for a config") as e:
        load_config(str(big))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path", [p for p in LEAVES if os.path.basename(os.path.dirname(p)) in
                                  ("COCO-InstanceSegmentation", "COCO-Keypoints", "synthetic")], ids=_rel)
def test_a_leaf_is_named_for_its_model_backbone_optimizer_and_schedule(path):
    name = os.path.basename(path)
    assert re.fullmatch(r"(mask|keypoint)_rcnn_(R_\d+|tiny)_FPN_(zenith|sgd_multistep|sgd_cosine)_\w+\.yaml", name), \
        f"{_rel(path)}: name a leaf <model>_<backbone>_FPN_<optimizer>_<schedule>.yaml, as detectron2 does"
