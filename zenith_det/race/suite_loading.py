"""Reading a race's suite file (its format: race.suite_format): every field is checked, and a
bad or missing declaration is a one-line UserError naming the suite file and the field."""
import math
import os
from typing import List, Optional

import yaml

from ..errors import UserError
from .suite_format import (CORRECTIONS, EQUIVALENCE_GROUPS, GROUPS, LR_KINDS, METRICS, MODES, STARTS, Arm, LrChoice, PlanningSd,
                    PowerPlan, Preregistration, SharpnessPlan, Suite, Tuning)


def load_suite(path: str) -> Suite:
    """Read and check a suite file; a bad one is a UserError naming the file and the field."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the suite file ({e.strerror})")
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a YAML suite file ({str(e).splitlines()[0]})")
    if not isinstance(raw, dict) or not isinstance(raw.get("arms"), list) or not raw["arms"]:
        raise UserError(f"{path}: a suite needs a non-empty list `arms`")
    here = os.path.dirname(os.path.abspath(path))
    mode = raw.get("mode", "iterations")
    if mode not in MODES:
        raise UserError(f"{path}: mode {mode!r} is not one of {', '.join(MODES)}")
    seeds = _seed_list(raw.get("seeds", [0]), path, "seeds")
    arms = [_arm(a, i, path, here, seeds) for i, a in enumerate(raw["arms"])]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: arm names must be unique (repeated: {sorted({n for n in names if names.count(n) > 1})})")
    reference = raw.get("reference", names[0])
    if reference not in names:
        raise UserError(f"{path}: reference {reference!r} is not an arm")
    budget, every = _number(raw.get("budget_hours", 0.0), path, "budget_hours"), _number(raw.get("eval_minutes", 0.0), path,
                                                                                        "eval_minutes")
    if mode == "wall_clock" and budget <= 0:
        raise UserError(f"{path}: mode wall_clock needs budget_hours > 0")
    common = raw.get("set") or {}
    if not isinstance(common, dict):
        raise UserError(f"{path}: `set` must map config keys to values")
    summaries = raw.get("summaries")
    if summaries is not None:
        if not isinstance(summaries, str) or not summaries.strip():
            raise UserError(f"{path}: summaries must be a folder (relative to the suite file), got {summaries!r}")
        summaries = os.path.normpath(os.path.join(here, summaries))
    suite = Suite(os.path.abspath(path), str(raw.get("title", "")), mode, seeds, reference, arms, budget, every,
                  common=common, summaries=summaries)
    suite.sharpness = _sharpness(raw.get("sharpness"), path, suite)
    suite.prereg = _preregistration(raw.get("preregistration"), path, suite)
    suite.tuning = _tuning(raw.get("tuning"), path, suite)
    _check_lrs(path, suite)
    suite.power = _power(raw.get("power"), path, suite)
    return suite


def _arm(a, i, path, here, seeds) -> Arm:
    where = f"{path}: arms[{i}]"
    if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not isinstance(a.get("config"), str):
        raise UserError(f"{where}: each arm needs `name` and `config` strings")
    if not a["name"].replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise UserError(f"{where}: name {a['name']!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
    config = os.path.normpath(os.path.join(here, a["config"]))
    if not os.path.isfile(config):
        raise UserError(f"{where}: config {a['config']!r} does not exist (paths are relative to the suite file)")
    raw_seeds = a.get("seeds", seeds)
    if isinstance(raw_seeds, int) and not isinstance(raw_seeds, bool):
        if not 1 <= raw_seeds <= len(seeds):
            raise UserError(f"{where}: seeds {raw_seeds} must be between 1 and the suite's {len(seeds)} seeds")
        arm_seeds = seeds[:raw_seeds]
    else:
        arm_seeds = _int_list(raw_seeds, path, f"arms[{i}].seeds")
    if set(arm_seeds) - set(seeds):
        raise UserError(f"{where}: seeds {sorted(set(arm_seeds) - set(seeds))} are not among the suite's seeds {seeds}")
    group = a.get("group", "main")
    if group not in GROUPS:
        raise UserError(f"{where}: group {group!r} is not one of {', '.join(GROUPS)}")
    overrides = a.get("set") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: `set` must map config keys to values")
    lr = _lr_choice(a.get("lr"), f"{where}.lr")
    if "SOLVER.BASE_LR" in overrides and lr.kind != "none":
        raise UserError(f"{where}: `set` SOLVER.BASE_LR and `lr` both choose the lr; declare it in `lr` only")
    return Arm(a["name"], config, str(a.get("label", a["name"])), group, arm_seeds, overrides, lr)


def _lr_choice(raw, where) -> LrChoice:
    if not isinstance(raw, dict) or len(set(raw) & set(LR_KINDS)) != 1:
        raise UserError(f"{where}: declare how the lr is chosen, exactly one of "
                        "{tune: [grid]}, {from: arm, times: x}, {fixed: value, why: ...}, {none: why}")
    kind = next(k for k in LR_KINDS if k in raw)
    extra = set(raw) - {kind, "why", "times"}
    if extra:
        raise UserError(f"{where}: unknown keys {sorted(extra)}")
    why = raw.get("why", "")
    if kind == "tune":
        grid = raw["tune"]
        if not isinstance(grid, list) or len(grid) < 2 or not all(_positive(v) for v in grid) or len(set(grid)) != len(grid):
            raise UserError(f"{where}.tune: a grid of at least two distinct positive lrs, got {grid!r}")
        return LrChoice("tune", tuple(float(v) for v in grid))
    if kind == "from":
        times = raw.get("times", 1.0)
        if not isinstance(raw["from"], str) or not _positive(times):
            raise UserError(f"{where}: `from` names an arm and `times` is a positive factor, got {raw!r}")
        return LrChoice("from", source=raw["from"], times=float(times))
    if kind == "fixed":
        if not _positive(raw["fixed"]) or not isinstance(why, str) or not why.strip():
            raise UserError(f"{where}: `fixed` needs a positive lr and a `why` (whose recommendation it is)")
        return LrChoice("fixed", value=float(raw["fixed"]), why=why.strip())
    reason = raw["none"]
    if not isinstance(reason, str) or not reason.strip():
        raise UserError(f"{where}.none: say why the arm has no lr")
    return LrChoice("none", why=reason.strip())


def _check_lrs(path, suite: Suite) -> None:
    names = {a.name: a for a in suite.arms}
    for i, a in enumerate(suite.arms):
        where = f"{path}: arms[{i}].lr"
        if a.lr.kind == "from":
            source = names.get(a.lr.source)
            if source is None or source.lr.kind != "tune":
                raise UserError(f"{where}: `from` {a.lr.source!r} must name an arm whose lr is tuned")
        if a.lr.kind == "tune" and len(a.lr.grid) != suite.tuning.grid_size:
            raise UserError(f"{where}.tune: {len(a.lr.grid)} lrs, but tuning.grid_size is {suite.tuning.grid_size} "
                            "(every tuned arm gets a grid of the same size)")
        if a.group == "main" and a.lr.kind != "tune":
            raise UserError(f"{where}: an arm of the main comparison runs at its own best lr: declare {{tune: [grid]}}")


def _tuning(raw, path, suite: Suite) -> Optional[Tuning]:
    if not any(a.lr.kind == "tune" for a in suite.arms):
        return None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: tuning: arms tune their lr, so declare tuning: {{seeds: [...], grid_size: N}}")
    seeds = _int_list(raw.get("seeds"), path, "tuning.seeds")
    if set(seeds) & set(suite.seeds):
        raise UserError(f"{path}: tuning.seeds {sorted(set(seeds) & set(suite.seeds))} are comparison seeds; "
                        "the lr is chosen on seeds the comparison does not use")
    size = raw.get("grid_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise UserError(f"{path}: tuning.grid_size must be an integer >= 2, got {size!r}")
    unknown = sorted(set(raw) - {"seeds", "grid_size", "extend_at_edge", "amended"})
    if unknown:
        raise UserError(f"{path}: tuning.{unknown[0]} is not a field; the fields are seeds, grid_size, extend_at_edge, amended")
    extend = raw.get("extend_at_edge", 0)
    if not isinstance(extend, int) or isinstance(extend, bool) or extend < 0:
        raise UserError(f"{path}: tuning.extend_at_edge must be an integer >= 0 (points added beyond an edge), got {extend!r}")
    amended = raw.get("amended")
    if amended is not None and (not isinstance(amended, str) or not amended.strip()):
        raise UserError(f"{path}: tuning.amended must say, in words, when and why the rule changed; got {amended!r}")
    return Tuning(seeds, size, extend, amended)


def _preregistration(raw, path, suite: Suite) -> Preregistration:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: preregistration: declare primary_metric, alpha, correction, margins, ... before the runs")
    where = f"{path}: preregistration"
    metric = raw.get("primary_metric")
    if metric not in METRICS:
        raise UserError(f"{where}.primary_metric must be one of {', '.join(METRICS)}, got {metric!r}")
    alpha = raw.get("alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 0.5:
        raise UserError(f"{where}.alpha must be a number in (0, 0.5), got {alpha!r}")
    correction = raw.get("correction")
    if correction not in CORRECTIONS:
        raise UserError(f"{where}.correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    margins = raw.get("margins") or {}
    if not isinstance(margins, dict) or not all(_positive(v) for v in margins.values()):
        raise UserError(f"{where}.margins must map groups to positive margins, got {margins!r}")
    for group in EQUIVALENCE_GROUPS:
        if suite.group(group) and group not in margins:
            raise UserError(f"{where}.margins.{group}: the {group} arms are an equivalence test; declare its margin")
    start = raw.get("start_default")
    if suite.group("start") and start not in STARTS:
        raise UserError(f"{where}.start_default must be one of {', '.join(STARTS)} (kept unless another wins), got {start!r}")
    ratio = raw.get("flatness_max_lr_ratio", None)
    if suite.sharpness.arms and (not _positive(ratio) or ratio < 1):
        raise UserError(f"{where}.flatness_max_lr_ratio must be a number >= 1, got {ratio!r}")
    shrink = raw.get("weight_decay_min_shrink")
    if not _positive(shrink) or shrink >= 1:
        raise UserError(f"{where}.weight_decay_min_shrink must be a fraction in (0, 1), got {shrink!r}")
    return Preregistration(metric, float(alpha), correction, {k: float(v) for k, v in margins.items()}, start,
                           float(ratio or 1.0), float(shrink))


def _power(raw, path, suite: Suite) -> PowerPlan:
    where = f"{path}: power"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: declare the power calculation (target, effect, paired_sd, families, unpowered)")
    target, effect = raw.get("target"), raw.get("effect")
    if not _positive(target) or target >= 1:
        raise UserError(f"{where}.target must be a probability in (0, 1), got {target!r}")
    if not _positive(effect):
        raise UserError(f"{where}.effect must be a positive difference in {suite.prereg.primary_metric}, got {effect!r}")
    sds = {}
    for name, spec in (raw.get("paired_sd") or {}).items():
        sds[name] = _planning_sd(name, spec, f"{where}.paired_sd.{name}")
    families, unpowered = raw.get("families") or {}, raw.get("unpowered") or {}
    if not isinstance(families, dict) or not isinstance(unpowered, dict):
        raise UserError(f"{where}: families and unpowered map groups to a planning SD / a reason")
    for group, sd in families.items():
        if sd not in sds:
            raise UserError(f"{where}.families.{group}: {sd!r} is not one of paired_sd ({', '.join(sds) or 'none'})")
    for group, reason in unpowered.items():
        if not isinstance(reason, str) or not reason.strip():
            raise UserError(f"{where}.unpowered.{group}: say why the group is not powered")
    for group in sorted({a.group for a in suite.arms}):
        if group not in families and group not in unpowered:
            raise UserError(f"{where}.families: the {group} arms need a planning SD (or a reason in power.unpowered)")
    return PowerPlan(float(target), float(effect), sds, dict(families), {k: v.strip() for k, v in unpowered.items()})


def _planning_sd(name, spec, where) -> PlanningSd:
    from .stats import sd_from_interval

    if not isinstance(spec, dict):
        raise UserError(f"{where}: {{sd: x}} or {{intervals: [[low, high], ...], n: N}}")
    source = str(spec.get("source", ""))
    if "sd" in spec:
        if not _positive(spec["sd"]):
            raise UserError(f"{where}.sd must be positive, got {spec['sd']!r}")
        return PlanningSd(name, float(spec["sd"]), source=source)
    intervals, n = spec.get("intervals"), spec.get("n")
    if (not isinstance(intervals, list) or not intervals
            or not all(isinstance(iv, list) and len(iv) == 2 and all(isinstance(x, (int, float)) for x in iv) and iv[0] < iv[1]
                       for iv in intervals)):
        raise UserError(f"{where}.intervals must be a list of [low, high] 95% intervals, got {intervals!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise UserError(f"{where}.n must be the number of paired seeds behind the intervals (>= 2), got {n!r}")
    variances = [sd_from_interval(lo, hi, n) ** 2 for lo, hi in intervals]
    return PlanningSd(name, math.sqrt(sum(variances) / len(variances)), tuple((float(lo), float(hi)) for lo, hi in intervals),
                      n, source)


def _sharpness(raw, path, suite: Suite) -> SharpnessPlan:
    if raw is None or raw == []:
        return SharpnessPlan()
    if isinstance(raw, list):
        raw = {"arms": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("arms"), list):
        raise UserError(f"{path}: sharpness: {{arms: [...], seeds: N, batches: B, max_iters: I, tol: T}} or a list of arms")
    names = [a.name for a in suite.arms]
    missing = [s for s in raw["arms"] if s not in names]
    if missing:
        raise UserError(f"{path}: sharpness names arms that do not exist: {missing}")
    seeds = {}
    for name in raw["arms"]:
        arm_seeds = suite.arm(name).seeds
        n = raw.get("seeds", len(arm_seeds))
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(arm_seeds):
            raise UserError(f"{path}: sharpness.seeds must be a count between 1 and {name}'s {len(arm_seeds)} seeds, got {n!r}")
        seeds[name] = arm_seeds[:n]
    batches, iters, tol = raw.get("batches", 2), raw.get("max_iters", 100), raw.get("tol", 0.02)
    if not isinstance(batches, int) or batches < 1 or not isinstance(iters, int) or iters < 2:
        raise UserError(f"{path}: sharpness.batches >= 1 and sharpness.max_iters >= 2 (integers)")
    if not _positive(tol) or tol >= 1:
        raise UserError(f"{path}: sharpness.tol must be a relative tolerance in (0, 1), got {tol!r}")
    return SharpnessPlan(tuple(raw["arms"]), seeds, batches, iters, float(tol))


def _seed_list(value, path, field) -> List[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UserError(f"{path}: {field} must be a positive count or a list of seeds, got {value!r}")
        return list(range(value))
    return _int_list(value, path, field)


def _int_list(value, path, field) -> List[int]:
    if (not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
            or len(set(value)) != len(value)):
        raise UserError(f"{path}: {field} must be a non-empty list of distinct non-negative integers, got {value!r}")
    return list(value)


def _number(value, path, field) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UserError(f"{path}: {field} must be a number, got {value!r}")
    return float(value)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
