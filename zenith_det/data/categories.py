"""Which test-set category each of a model's labels is (TEST.CATEGORY_MATCH).

A model's label k is the k-th category, by id, of the data it was trained on
(coco.py sorts the categories by id). The evaluator writes every detection with a
category id of the test json, so it must know which test category label k is.
Taking the test json's k-th category by id is right only when both jsons have the
same categories; when they differ (the same ids under other names, other ids under
the same names) it scores the detections against the wrong ground truth and prints
the AP of another question. So:

  "exact" (default)  the test json must have the training json's categories, the same
                     (id, name) pairs (their order in the json does not matter: both are
                     sorted by id), and for keypoint models the same keypoint names in
                     the same order. Anything else is refused.
  "name"             label k goes to the test category of the same name, whatever its
                     id; the table is logged. A training category the test json lacks
                     has its detections dropped. Refused: a name used twice in either
                     json (which one would it be?), a test category the training json
                     lacks (the model can never predict it, so its ground truth can only
                     be missed and the mean AP would be that of another question: drop it
                     from the test json instead), and, for keypoint models, other keypoint
                     names (keypoints are scored by position; they are never remapped).

Every refusal is one line naming both jsons, the first disagreement and the fix.
Knows nothing of the trainer: the engine, the evaluation tools and the visualizers call
test_category_maps() before inference.
"""
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import UserError
from .build import get_dataset_metadata, metadata_from_cfg, targets_for_architecture

__all__ = ["CATEGORY_MATCH_MODES", "CategoryMatch", "match_categories", "test_category_maps"]

logger = logging.getLogger(__name__)

CATEGORY_MATCH_MODES = ("exact", "name")


@dataclass
class CategoryMatch:
    """The outcome of match_categories.

    label_to_category_id: {model label 1..K: test json category id, or None where
        the test json lacks the category (its detections are dropped)}.
    table: under "name", the log lines (label, training id and name, test id); else "".
    dropped: [(label, training id, name)] of the labels mapped to None.
    """

    label_to_category_id: Dict[int, Optional[int]]
    table: str = ""
    dropped: List[Tuple[int, int, str]] = field(default_factory=list)


def match_categories(model, test, mode="exact", *, test_name=None, keypoints=True) -> CategoryMatch:
    """Map the labels of a model built for `model` (a DatasetMetadata: the training data's)
    to the categories of `test` (the test data's DatasetMetadata), as `mode` says.

    `test_name` (the DATASETS.TEST name) only makes messages clearer; `keypoints` says
    whether the model predicts keypoints (then the keypoint names must agree).
    Raises UserError (one line) when the categories cannot be matched.
    """
    if mode not in CATEGORY_MATCH_MODES:
        raise UserError(f"TEST.CATEGORY_MATCH is {mode!r}; use one of {', '.join(CATEGORY_MATCH_MODES)} "
                        "('exact': the test data's categories must be the training data's, same ids and names; "
                        "'name': map them by name)")
    where = _where(model, test, test_name)
    if mode == "exact":
        difference = _first_difference(model, test, keypoints)
        if difference:
            raise UserError(f"TEST.CATEGORY_MATCH exact: {where}: {difference}; evaluate on data with the training "
                            "categories (same ids and names), or set TEST.CATEGORY_MATCH name to map categories by name")
        return CategoryMatch(dict(model.contiguous_id_to_category_id))
    return _match_by_name(model, test, keypoints, where)


def _where(model, test, test_name):
    dataset = f"DATASETS.TEST {test_name} ({test.json_file})" if test_name else f"the test data ({test.json_file})"
    return f"the categories of {dataset} disagree with those of the model's training data ({model.json_file})"


def _categories(meta) -> Dict[int, str]:
    """{category id: name} of a DatasetMetadata (thing_classes[k - 1] is label k's)."""
    return {meta.contiguous_id_to_category_id[k + 1]: name for k, name in enumerate(meta.thing_classes)}


def _first_difference(model, test, keypoints) -> str:
    """The first disagreement of (id, name) pairs, by id, then of keypoint names; "" if none."""
    ours, theirs = _categories(model), _categories(test)
    for cid in sorted(set(ours) | set(theirs)):
        if cid not in theirs:
            return f"category id {cid} ({ours[cid]!r}) is in the training data but not in the test data"
        if cid not in ours:
            return f"category id {cid} ({theirs[cid]!r}) is in the test data but not in the training data"
        if ours[cid] != theirs[cid]:
            return f"category id {cid} is {ours[cid]!r} in the training data but {theirs[cid]!r} in the test data"
    return _keypoint_difference(model, test) if keypoints else ""


def _keypoint_difference(model, test) -> str:
    ours, theirs = list(model.keypoint_names), list(test.keypoint_names)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return f"keypoint {i + 1} is {a!r} in the training data but {b!r} in the test data"
    if len(ours) != len(theirs):
        return f"the training data has {len(ours)} keypoints but the test data {len(theirs)}"
    return ""


def _duplicate_name(meta, which) -> str:
    seen = {}
    for cid, name in sorted(_categories(meta).items()):
        if name in seen:
            return (f"category name {name!r} is both id {seen[name]} and id {cid} in the {which} data "
                    f"({meta.json_file}); mapping by name needs every name once: rename one, or set "
                    "TEST.CATEGORY_MATCH exact")
        seen[name] = cid
    return ""


def _match_by_name(model, test, keypoints, where) -> CategoryMatch:
    for meta, which in ((model, "training"), (test, "test")):
        duplicate = _duplicate_name(meta, which)
        if duplicate:
            raise UserError(f"TEST.CATEGORY_MATCH name: {duplicate}")
    test_id_of = {name: cid for cid, name in _categories(test).items()}
    training_names = set(model.thing_classes)
    unknown = [(cid, name) for cid, name in sorted(_categories(test).items()) if name not in training_names]
    if unknown:
        cid, name = unknown[0]
        raise UserError(f"TEST.CATEGORY_MATCH name: {where}: the test data's category {name!r} (id {cid}"
                        f"{f', and {len(unknown) - 1} more' if len(unknown) > 1 else ''}) is not in the training "
                        "data, so the model can never predict it and the AP would not be the model's; remove it "
                        "(and its annotations) from the test json, or evaluate on data with the training categories")
    if keypoints:
        difference = _keypoint_difference(model, test)
        if difference:
            raise UserError(f"TEST.CATEGORY_MATCH name: {where}: {difference}; keypoints are scored by position and "
                            "never mapped by name: evaluate on data with the training keypoints")
    mapping, dropped = {}, []
    rows = [("label", "training id", "name", "test id")]
    for k, name in enumerate(model.thing_classes, start=1):
        training_id = model.contiguous_id_to_category_id[k]
        mapping[k] = test_id_of.get(name)
        if mapping[k] is None:
            dropped.append((k, training_id, name))
        rows.append((str(k), str(training_id), name,
                     str(mapping[k]) if mapping[k] is not None else "- (not in the test data: detections dropped)"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    table = (f"TEST.CATEGORY_MATCH name: model labels mapped by name to the categories of {test.json_file} "
             f"(trained on {model.json_file}):\n" + "\n".join(lines))
    return CategoryMatch(mapping, table, dropped)


_LOGGED_MATCHES = set()  # (test json, training json): a name-match table is logged once, not at every evaluation


def test_category_maps(cfg, model_metadata=None) -> "OrderedDict[str, tuple]":
    """{test dataset: (its metadata, model label -> its category id or None)} for DATASETS.TEST.

    The model's labels are those of `model_metadata` (a checkpoint's, when evaluating one),
    by default of its training data (metadata_from_cfg); every test
    dataset's categories are matched to them as TEST.CATEGORY_MATCH says
    (match_categories): "exact" refuses any disagreement of ids, names or keypoints
    in one line, "name" maps labels by name and logs the table.
    """
    if not cfg.DATASETS.TEST:
        return OrderedDict()
    model_metadata = model_metadata or metadata_from_cfg(cfg)
    keypoints = targets_for_architecture(cfg.MODEL.META_ARCHITECTURE)["with_keypoints"]
    maps = OrderedDict()
    for name in cfg.DATASETS.TEST:
        metadata = get_dataset_metadata(name, cfg)
        match = match_categories(model_metadata, metadata, cfg.TEST.CATEGORY_MATCH, test_name=name, keypoints=keypoints)
        if (match.table or match.dropped) and (metadata.json_file, model_metadata.json_file) not in _LOGGED_MATCHES:
            _LOGGED_MATCHES.add((metadata.json_file, model_metadata.json_file))
            logger.info("%s", match.table)
            if match.dropped:
                logger.warning("DATASETS.TEST %s: %d of the model's categories are not in %s; their detections are "
                               "dropped: %s", name, len(match.dropped), metadata.json_file,
                               ", ".join(f"{n!r} (id {i})" for _, i, n in match.dropped))
        maps[name] = (metadata, match.label_to_category_id)
    return maps
