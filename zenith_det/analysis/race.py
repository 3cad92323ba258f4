"""A race of optimizer configs: arms x paired seeds, each run in its own process.

A suite file (YAML, e.g. configs/compare/suites/cpu.yaml) lists the arms:

    title: ...
    mode: iterations          # every run trains its config's SOLVER.MAX_ITER (equal iterations), or
                              # wall_clock: every run gets budget_hours of SOLVER.MAX_TIME_HOURS
    budget_hours: 0.05        # wall_clock only
    eval_minutes: 0.5         # wall_clock only: evaluate every this many minutes
    seeds: [0, 1, 2]          # the same seeds for every arm, so differences pair up
    reference: zenith         # the arm the paired differences are taken against
    set: {MODEL.DEVICE: cuda} # optional: overrides for every run, before each arm's own
    arms:
      - name: zenith          # its folder: <out>/<name>/seed<k>/
        config: ../zenith.yaml  # relative to the suite file; a config with _BASE_
        label: ZENITH
        group: main           # main | start | eta0 | W | weight decay | ... (the report's sections)
        seeds: [0]            # optional: fewer seeds than the suite's
        set: {SOLVER.BASE_LR: 0.005}   # optional overrides on top of the config
    sharpness: [zenith, sgd_multistep]   # arms whose final checkpoints get the flatness probe

A run is done when its folder holds race_stats.json; a run with a checkpoint is
resumed; a failed one is recorded (race_failed.json) and retried only on request.
The report is rebuilt from what is on disk (`analysis.report`).
"""
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import yaml

from ..errors import UserError
from ..exit_codes import PREEMPTED
from ..utils.fileio import atomic_write_json

STATS = "race_stats.json"
FAILED = "race_failed.json"
SHARPNESS = "sharpness.json"
COSTS = "costs.json"  # the per-iteration cost of each main arm (analysis.overhead)
MODES = ("iterations", "wall_clock")
# What the report calls each optimizer's family (the claims compare ZENITH with each).
HAND_MADE = ("SGD",)


@dataclasses.dataclass
class Arm:
    name: str
    config: str
    label: str
    group: str
    seeds: List[int]
    overrides: Dict[str, object]

    def run_dir(self, out: str, seed: int) -> str:
        return os.path.join(out, self.name, f"seed{seed}")


@dataclasses.dataclass
class Suite:
    path: str
    title: str
    mode: str
    seeds: List[int]
    reference: str
    arms: List[Arm]
    budget_hours: float = 0.0
    eval_minutes: float = 0.0
    sharpness: Sequence[str] = ()
    common: Dict[str, object] = dataclasses.field(default_factory=dict)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def runs(self):
        """(arm, seed) in seed-major order: every arm's first seed before any arm's second,
        so a race cut short still has paired runs."""
        seeds = sorted({s for a in self.arms for s in a.seeds}, key=self.seeds.index)
        return [(a, s) for s in seeds for a in self.arms if s in a.seeds]


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
    seeds = _int_list(raw.get("seeds", [0]), path, "seeds")
    arms = []
    for i, a in enumerate(raw["arms"]):
        where = f"{path}: arms[{i}]"
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not isinstance(a.get("config"), str):
            raise UserError(f"{where}: each arm needs `name` and `config` strings")
        if not a["name"].replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise UserError(f"{where}: name {a['name']!r} must be letters, digits, '_', '-' or '.' (it names a folder)")
        config = os.path.normpath(os.path.join(here, a["config"]))
        if not os.path.isfile(config):
            raise UserError(f"{where}: config {a['config']!r} does not exist (paths are relative to the suite file)")
        arm_seeds = _int_list(a.get("seeds", seeds), path, f"arms[{i}].seeds")
        if set(arm_seeds) - set(seeds):
            raise UserError(f"{where}: seeds {sorted(set(arm_seeds) - set(seeds))} are not among the suite's seeds {seeds}")
        overrides = a.get("set") or {}
        if not isinstance(overrides, dict):
            raise UserError(f"{where}: `set` must map config keys to values")
        arms.append(Arm(a["name"], config, str(a.get("label", a["name"])), str(a.get("group", "main")), arm_seeds, overrides))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: arm names must be unique (repeated: {sorted({n for n in names if names.count(n) > 1})})")
    reference = raw.get("reference", names[0])
    if reference not in names:
        raise UserError(f"{path}: reference {reference!r} is not an arm")
    sharp = raw.get("sharpness", []) or []
    if any(s not in names for s in sharp):
        raise UserError(f"{path}: sharpness names arms that do not exist: {[s for s in sharp if s not in names]}")
    budget, every = float(raw.get("budget_hours", 0.0)), float(raw.get("eval_minutes", 0.0))
    if mode == "wall_clock" and budget <= 0:
        raise UserError(f"{path}: mode wall_clock needs budget_hours > 0")
    common = raw.get("set") or {}
    if not isinstance(common, dict):
        raise UserError(f"{path}: `set` must map config keys to values")
    return Suite(os.path.abspath(path), str(raw.get("title", "")), mode, seeds, reference, arms, budget, every, tuple(sharp),
                 common)


def _int_list(value, path, field) -> List[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v >= 0 for v in value):
        raise UserError(f"{path}: {field} must be a non-empty list of non-negative integers, got {value!r}")
    return list(value)


def run_options(suite: Suite, arm: Arm, seed: int, out: str, extra: Sequence[str] = ()) -> List[str]:
    """The KEY VALUE options of one run: the mode's settings, the arm's overrides, its seed
    and folder, then `extra` (the command line's, for every run)."""
    opts: List[str] = []
    if suite.mode == "iterations":
        opts += ["SOLVER.MAX_TIME_HOURS", "0.0"]  # no budget: every run trains MAX_ITER
    else:
        opts += ["SOLVER.MAX_TIME_HOURS", repr(suite.budget_hours), "TEST.EVAL_PERIOD", "0",
                 "TEST.EVAL_PERIOD_MINUTES", repr(suite.eval_minutes)]
    for key, value in list(suite.common.items()) + list(arm.overrides.items()):
        opts += [str(key), value if isinstance(value, str) else repr(value)]
    opts += ["SEED", str(seed), "OUTPUT_DIR", arm.run_dir(out, seed)]
    return opts + list(extra)


def child_command(config: str, opts: Sequence[str], resume: bool) -> List[str]:
    return [sys.executable, "-m", "zenith_det.analysis.race_run", config] + (["--resume"] if resume else []) + ["--"] + list(opts)


def run_suite(suite: Suite, out: str, jobs: int = 1, only: Optional[Sequence[str]] = None, retry_failed: bool = False,
              extra: Sequence[str] = (), log=None) -> Dict[str, int]:
    """Train every run not yet done, `jobs` at a time (each with cores // jobs torch threads).
    Returns {run folder: exit code} for the runs started now."""
    log = log or _say
    pending = []
    for arm, seed in suite.runs():
        if only and arm.name not in only:
            continue
        vdir = arm.run_dir(out, seed)
        if os.path.exists(os.path.join(vdir, STATS)):
            continue
        if os.path.exists(os.path.join(vdir, FAILED)):
            if not retry_failed:
                log(f"[race] {arm.name} seed {seed}: failed before ({FAILED}); --retry-failed to run again")
                continue
            shutil.rmtree(vdir)
        resume = os.path.exists(os.path.join(vdir, "last_checkpoint"))
        if os.path.isdir(vdir) and not resume:
            shutil.rmtree(vdir)  # killed before its first checkpoint: start clean
        pending.append((arm, seed, resume))
    env = _child_env(jobs)
    running: Dict[str, subprocess.Popen] = {}
    codes: Dict[str, int] = {}
    started: Dict[str, float] = {}
    # SIGTERM (a scheduler, `kill`) stops the race as Ctrl-C does: each run checkpoints. The
    # handlers are set explicitly, since a shell's background job starts with SIGINT ignored.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            while pending and len(running) < max(jobs, 1):
                arm, seed, resume = pending.pop(0)
                vdir = arm.run_dir(out, seed)
                os.makedirs(vdir, exist_ok=True)
                cmd = child_command(arm.config, run_options(suite, arm, seed, out, extra), resume)
                with open(os.path.join(vdir, "race_command.txt"), "w") as f:
                    f.write(" ".join(cmd) + "\n")
                log(f"[race] {arm.name} seed {seed}: {'resuming' if resume else 'training'} ({datetime.datetime.now():%H:%M:%S})")
                with open(os.path.join(vdir, "race_stdout.log"), "a") as logf:
                    running[vdir] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
                started[vdir] = time.perf_counter()
            time.sleep(0.5)
            for vdir, proc in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[vdir]
                codes[vdir] = rc
                log(f"[race] {os.path.relpath(vdir, out)}: exit {rc} after {time.perf_counter() - started[vdir]:.0f} s")
                if rc == PREEMPTED:
                    pending.clear()
                elif rc != 0 and not os.path.exists(os.path.join(vdir, FAILED)) and not os.path.exists(os.path.join(vdir, STATS)):
                    atomic_write_json({"status": "failed", "returncode": rc, "error": _tail(os.path.join(vdir, "race_stdout.log"))},
                                      os.path.join(vdir, FAILED), indent=1)
    except KeyboardInterrupt:
        # Each run stops at its next iteration and checkpoints (exit 75); the next invocation resumes it.
        log("[race] interrupted: waiting for the runs to write their checkpoints")
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for vdir, proc in running.items():
            codes[vdir] = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return codes


def _child_env(jobs: int) -> Dict[str, str]:
    """The environment of a run: its share of the cores (cores // jobs torch threads)."""
    threads = max((os.cpu_count() or 1) // max(jobs, 1), 1)
    return dict(os.environ, OMP_NUM_THREADS=str(threads), ZENITH_RACE_THREADS=str(threads))


def _say(message: str) -> None:
    print(message, flush=True)  # a race's log is usually a file: each line as it happens


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sharpness(suite: Suite, out: str, num_batches: int, iters: int, jobs: int = 1, log=None) -> None:
    """The flatness probe on the final checkpoint of every finished run of the suite's
    `sharpness` arms, `jobs` processes at a time; results in each run's sharpness.json."""
    log = log or _say
    todo = []
    for name in suite.sharpness:
        arm = suite.arm(name)
        for seed in arm.seeds:
            vdir = arm.run_dir(out, seed)
            ckpt = os.path.join(vdir, "model_final.pth")
            if os.path.exists(os.path.join(vdir, STATS)) and os.path.exists(ckpt) and not os.path.exists(os.path.join(vdir, SHARPNESS)):
                todo.append([sys.executable, "-m", "zenith_det.analysis.race_run", "--sharpness", ckpt,
                             os.path.join(vdir, SHARPNESS), str(num_batches), str(iters)])
    env = _child_env(jobs)
    running: List[subprocess.Popen] = []
    while todo or running:
        while todo and len(running) < max(jobs, 1):
            cmd = todo.pop(0)
            log(f"[race] sharpness of {os.path.relpath(cmd[4], out)}")
            running.append(subprocess.Popen(cmd, env=env))
        time.sleep(0.5)
        running = [p for p in running if p.poll() is None]


def load_run(out: str, arm: Arm, seed: int) -> Optional[dict]:
    """{"stats", "failed", "records", "sharpness"} of one run, or None if it never started."""
    from .metrics import load_metrics

    vdir = arm.run_dir(out, seed)
    stats, failed, sharp = (_load_json(os.path.join(vdir, name)) for name in (STATS, FAILED, SHARPNESS))
    metrics = os.path.join(vdir, "metrics.json")
    records = load_metrics(metrics) if os.path.exists(metrics) else []
    if stats is None and failed is None and not records:
        return None
    return {"stats": stats, "failed": failed, "records": records, "sharpness": sharp}


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _tail(path: str, n: int = 6) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""
