"""A race of optimizer configs: arms x paired seeds, each run in its own process.

The suite file (race.suite_format; e.g. configs/compare/suites/cpu.yaml) declares the
arms, the seeds and everything the verdicts depend on, before anything runs. The
race trains it in two stages:

1. tuning: every arm whose lr is `{tune: [grid]}` trains each grid point on the
   tuning seeds (never comparison seeds); `choose_lrs` then picks, per arm, the grid
   point with the best mean primary metric over the tuning seeds. A point that
   diverged on any tuning seed is not chosen; a missing or failed tuning run leaves
   the choice open, and the arm (and every arm whose lr is `from` it) waits. While
   the best lies at an edge of the grid, the suite's edge rule trains the next point
   beyond it (up to `tuning.extend_at_edge` points per arm) and chooses again.
2. the comparison: every arm on its comparison seeds, seed-major (every arm's first
   seed before any arm's second, so a race cut short still has paired runs), at its
   chosen lr (`{from: arm, times: x}`: that arm's choice times x; `fixed`: the
   declared value; `none`: the config's, for methods without an lr).

Each run trains into OUT/<arm>/seed<k>/ (tuning: OUT/<arm>/tune-lr<lr>/seed<k>/). As
each finishes, its summary is written beside the report (race.run_summary): a run
whose summary exists is not trained again, on this machine or another; a stopped one
resumes from its checkpoint; a failed one is recorded and retried only on request.
"""
import datetime
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..exit_codes import PREEMPTED
from ..utils.fileio import atomic_write_json
from . import run_summary
from .run_summary import COSTS, FAILED, SHARPNESS, STATS  # noqa: F401  (the names other modules use)
from .suite_format import MODES, Arm, Run, Suite, extend_grid  # noqa: F401
from .suite_loading import load_suite  # noqa: F401  (the name tools and tests use)
from .stats import Summary

# ------------------------------------------------------------------------------------ the lrs


class Choice:
    """The tuning stage's outcome for one arm: `lr` (None while undecided), per grid point
    (lr, Summary of the primary metric over the tuning seeds, diverged seeds, missing runs),
    why it is what it is, whether the lr lies at an edge of the grid searched, and how many
    points the edge rule added (`added`, the first or last of `points`)."""

    def __init__(self, arm: str, lr: Optional[float], points: List[tuple], reason: str, edge: bool = False):
        self.arm, self.lr, self.points, self.reason, self.edge = arm, lr, points, reason, edge
        self.added: Tuple[float, ...] = ()  # set by choose_lrs


def choose_lrs(suite: Suite, summaries: Dict[Run, dict]) -> Dict[str, Choice]:
    """The lr of every tuned arm, from the tuning runs' summaries: the best mean primary
    metric over the tuning seeds among the points none of whose runs diverged. While the best
    lies at an edge of the grid, the suite's edge rule (tuning.extend_at_edge) adds the next
    point beyond that edge, and the choice waits for its runs."""
    choices = {}
    for arm in suite.arms:
        if arm.lr.kind != "tune":
            continue
        grid, added = sorted(arm.lr.grid), []
        choice = _choose(suite, arm, grid, summaries)
        while choice.lr is not None and choice.edge and len(added) < suite.tuning.extend_at_edge:
            low = choice.lr == grid[0]
            grid = extend_grid(grid, low)
            added.append(grid[0] if low else grid[-1])
            choice = _choose(suite, arm, grid, summaries)
        choice.added = tuple(added)
        if added:
            choice.reason += f"; the edge rule added lr {', '.join(f'{v:g}' for v in added)}"
        choices[arm.name] = choice
    return choices


def _choose(suite: Suite, arm: Arm, grid: Sequence[float], summaries: Dict[Run, dict]) -> Choice:
    metric = suite.prereg.primary_metric
    points, waiting = [], []
    for lr in grid:
        values, diverged, missing = [], [], []
        for seed in suite.tuning.seeds:
            run = Run(arm.name, seed, "tune", lr)
            s = summaries.get(run)
            if s is None or s["status"] == "failed" or (s["status"] == "ok" and metric not in s["final"]):
                missing.append(run.describe(suite.labels) + (" failed" if s is not None else " missing"))
            elif s["status"] == "diverged":
                diverged.append(seed)
            else:
                values.append(s["final"][metric])
        points.append((lr, Summary(values), diverged, missing))
        waiting += missing
    if waiting:
        return Choice(arm.name, None, points, f"undecided: {len(waiting)} tuning run(s) missing or failed "
                      f"({'; '.join(waiting[:3])}{' ...' if len(waiting) > 3 else ''})")
    eligible = [p for p in points if not p[2]]
    if not eligible:
        return Choice(arm.name, None, points, "every lr of the grid diverged on a tuning seed")
    best = max(eligible, key=lambda p: p[1].mean)  # the first of equal means, in grid order
    edge = best[0] in (grid[0], grid[-1])
    return Choice(arm.name, best[0], points, f"best mean {metric} {best[1].mean:.2f} at lr {best[0]:g}"
                  + (" (at the edge of the grid: the best lr may lie beyond it)" if edge else ""), edge)


def tuning_runs(suite: Suite, choices: Dict[str, Choice]) -> List[Run]:
    """The tuning runs the choices need: the declared grids, then the points the edge rule added."""
    runs = suite.tuning_runs()
    for choice in choices.values():
        runs += [Run(choice.arm, s, "tune", lr) for lr in choice.added for s in suite.tuning.seeds]
    return runs


def resolve_lr(suite: Suite, arm: Arm, choices: Dict[str, Choice]) -> Tuple[Optional[float], Optional[str]]:
    """(lr to train the comparison at, None) or (None, why it is not known yet). An arm with
    `lr: {none: ...}` trains at its config's lr: (None, None)."""
    kind = arm.lr.kind
    if kind == "fixed":
        return arm.lr.value, None
    if kind == "none":
        return None, None
    source = arm.name if kind == "tune" else arm.lr.source
    choice = choices.get(source)
    if choice is None or choice.lr is None:
        return None, f"waiting for the lr of {suite.labels[source]}: " + (choice.reason if choice else "not tuned yet")
    return choice.lr * (arm.lr.times if kind == "from" else 1.0), None


def same_lr(a: Optional[float], b: Optional[float]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9))


# ------------------------------------------------------------------------------------ one run


def run_options(suite: Suite, arm: Arm, seed: int, out: str, extra: Sequence[str] = (), lr: Optional[float] = None,
                key: Optional[str] = None) -> List[str]:
    """The KEY VALUE options of one run: the mode's settings, the suite's and the arm's
    overrides, its lr, its seed and folder, then `extra` (the command line's, for every run)."""
    opts: List[str] = []
    if suite.mode == "iterations":
        opts += ["SOLVER.MAX_TIME_HOURS", "0.0"]  # no budget: every run trains MAX_ITER
    else:
        opts += ["SOLVER.MAX_TIME_HOURS", repr(suite.budget_hours), "TEST.EVAL_PERIOD", "0",
                 "TEST.EVAL_PERIOD_MINUTES", repr(suite.eval_minutes)]
    for k, value in list(suite.common.items()) + list(arm.overrides.items()):
        opts += [str(k), value if isinstance(value, str) else repr(value)]
    if lr is not None:
        opts += ["SOLVER.BASE_LR", repr(float(lr))]
    opts += ["SEED", str(seed), "OUTPUT_DIR", os.path.join(out, key or os.path.join(arm.name, f"seed{seed}"))]
    return opts + list(extra)


def child_command(config: str, opts: Sequence[str], resume: bool, sharpness=None) -> List[str]:
    cmd = [sys.executable, "-m", "zenith_det.race.run_process", config] + (["--resume"] if resume else [])
    if sharpness is not None:
        cmd += ["--sharpness-after"] + [str(v) for v in sharpness]
    return cmd + ["--"] + list(opts)


def _sharpness_of(suite: Suite, run: Run):
    plan = suite.sharpness
    if run.stage == "compare" and run.arm in plan.arms and run.seed in plan.seeds.get(run.arm, ()):
        return plan.batches, plan.max_iters, plan.tol
    return None


def _record(suite: Suite, run: Run, vdir: str, opts: Sequence[str], lr, summaries: str, log) -> Optional[dict]:
    """Write the run's summary from its folder (once it has an outcome); returns it."""
    summary = run_summary.build_summary(suite, run, vdir, _without_folder(opts), lr)
    if summary is not None:
        run_summary.write_summary(summaries, run, summary)
    return summary


def _without_folder(opts: Sequence[str]) -> List[str]:
    out, skip = [], False
    for i, o in enumerate(opts):
        if skip:
            skip = False
            continue
        if o == "OUTPUT_DIR" and i % 2 == 0:
            skip = True
            continue
        out.append(o)
    return out


# ------------------------------------------------------------------------------------ the runner


class _Job:
    def __init__(self, run: Run, vdir: str, cmd: List[str], resume: bool, done: Callable[[int], None], what: str = ""):
        self.run, self.vdir, self.cmd, self.resume, self.done = run, vdir, cmd, resume, done
        self.what = what or ("resuming" if resume else "training")


def run_suite(suite: Suite, out: str, jobs: int = 1, only: Optional[Sequence[str]] = None, retry_failed: bool = False,
              extra: Sequence[str] = (), log=None, summaries: Optional[str] = None) -> Dict[str, int]:
    """Train every run not yet done, `jobs` at a time (each with cores // jobs torch threads):
    the tuning stage, then the comparison at the chosen lrs. Returns {run folder: exit code}
    for the runs started now."""
    log = log or _say
    summaries = summaries or run_summary.summaries_dir(suite, out)
    codes: Dict[str, int] = {}
    tuning: List[Run] = []
    while True:  # the declared grids, then each point the edge rule adds, until none is added
        choices = choose_lrs(suite, run_summary.read_all(suite, summaries))
        more = [r for r in tuning_runs(suite, choices) if r not in tuning]
        if not more:
            break
        tuning += more
        if _run_stage(suite, out, summaries, more, {}, jobs, only, retry_failed, extra, log, codes):
            return codes
    for name, choice in choices.items():
        log(f"[race] lr of {suite.labels[name]}: {choice.reason}")
    _run_stage(suite, out, summaries, suite.compare_runs(), choices, jobs, only, retry_failed, extra, log, codes)
    return codes


def _run_stage(suite, out, summaries, runs, choices, jobs, only, retry_failed, extra, log, codes) -> bool:
    """Train `runs` (those not done); True when the race was stopped (preempted, interrupted)."""
    pending: List[_Job] = []
    for run in runs:
        if only and run.arm not in only:
            continue
        arm = suite.arm(run.arm)
        if run.stage == "tune":
            lr, waiting = run.lr, None
        else:
            lr, waiting = resolve_lr(suite, arm, choices)
        vdir = os.path.join(out, run.key)
        summary = run_summary.read_summary(summaries, run)
        if summary is None and (os.path.exists(os.path.join(vdir, STATS)) or os.path.exists(os.path.join(vdir, FAILED))):
            # trained before its summary was written (a race stopped between the two): record it now,
            # at the lr it trained at
            outcome = run_summary._load_json(os.path.join(vdir, STATS)) or run_summary._load_json(os.path.join(vdir, FAILED)) or {}
            trained = outcome.get("base_lr", lr) if arm.lr.kind != "none" else None
            opts = run_options(suite, arm, run.seed, out, extra, trained, run.key)
            summary = _record(suite, run, vdir, opts, trained, summaries, log)
        if waiting is not None:
            if summary is None:
                log(f"[race] {run.describe(suite.labels)}: {waiting}")
            continue
        if summary is not None:
            if not same_lr(summary.get("lr"), lr):
                log(f"[race] {run.describe(suite.labels)}: trained at lr {summary.get('lr')}, the lr now chosen is {lr}: "
                    "training it again")
                _remove(run_summary.summary_path(summaries, run), vdir)
            elif summary["status"] == "failed":
                if not retry_failed:
                    log(f"[race] {run.describe(suite.labels)}: failed before; --retry-failed to run again")
                    continue
                _remove(run_summary.summary_path(summaries, run), vdir)
            else:
                continue
        resume = os.path.exists(os.path.join(vdir, "last_checkpoint"))
        if os.path.isdir(vdir) and not resume:
            shutil.rmtree(vdir)  # killed before its first checkpoint: start clean
        opts = run_options(suite, arm, run.seed, out, extra, lr, run.key)
        cmd = child_command(arm.config, opts, resume, _sharpness_of(suite, run))

        def done(rc, run=run, vdir=vdir, opts=opts, lr=lr):
            if rc != 0 and rc != PREEMPTED and not os.path.exists(os.path.join(vdir, FAILED)) \
                    and not os.path.exists(os.path.join(vdir, STATS)):
                atomic_write_json({"status": "failed", "returncode": rc, "error": _tail(os.path.join(vdir, "race_stdout.log"))},
                                  os.path.join(vdir, FAILED), indent=1)
            if rc != PREEMPTED:
                _record(suite, run, vdir, opts, lr, summaries, log)

        pending.append(_Job(run, vdir, cmd, resume, done))
    return _execute(pending, jobs, out, log, codes, labels=suite.labels)


def _remove(summary_file: str, vdir: str) -> None:
    if os.path.exists(summary_file):
        os.remove(summary_file)
    if os.path.isdir(vdir):
        shutil.rmtree(vdir)


def _execute(pending: List[_Job], jobs: int, out: str, log, codes: Dict[str, int], labels=None) -> bool:
    env = _child_env(jobs)
    running: Dict[str, Tuple[_Job, subprocess.Popen]] = {}
    started: Dict[str, float] = {}
    stopped = False
    # SIGTERM (a scheduler, `kill`) stops the race as Ctrl-C does: each run checkpoints. The
    # handlers are set explicitly, since a shell's background job starts with SIGINT ignored.
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending or running:
            while pending and len(running) < max(jobs, 1):
                job = pending.pop(0)
                os.makedirs(job.vdir, exist_ok=True)
                with open(os.path.join(job.vdir, "race_command.txt"), "w") as f:
                    f.write(" ".join(job.cmd) + "\n")
                log(f"[race] {job.run.describe(labels or {})}: {job.what} ({datetime.datetime.now():%H:%M:%S})")
                with open(os.path.join(job.vdir, "race_stdout.log"), "a") as logf:
                    running[job.vdir] = (job, subprocess.Popen(job.cmd, stdout=logf, stderr=subprocess.STDOUT, env=env))
                started[job.vdir] = time.perf_counter()
            time.sleep(0.5)
            for vdir, (job, proc) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[vdir]
                codes[vdir] = rc
                log(f"[race] {os.path.relpath(vdir, out)}: exit {rc} after {time.perf_counter() - started[vdir]:.0f} s")
                job.done(rc)
                if rc == PREEMPTED:
                    pending.clear()
                    stopped = True
    except KeyboardInterrupt:
        # Each run stops at its next iteration and checkpoints (exit 75); the next invocation resumes it.
        log("[race] interrupted: waiting for the runs to write their checkpoints")
        stopped = True
        for _, proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for vdir, (job, proc) in running.items():
            codes[vdir] = proc.wait()
            job.done(codes[vdir])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stopped


def _child_env(jobs: int) -> Dict[str, str]:
    """The environment of a run: its share of the cores (cores // jobs torch threads)."""
    threads = max((os.cpu_count() or 1) // max(jobs, 1), 1)
    return dict(os.environ, OMP_NUM_THREADS=str(threads), ZENITH_RACE_THREADS=str(threads))


def _say(message: str) -> None:
    print(message, flush=True)  # a race's log is usually a file: each line as it happens


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sharpness(suite: Suite, out: str, jobs: int = 1, log=None, summaries: Optional[str] = None) -> None:
    """The flatness probe for the planned runs that finished without it, or with a probe of another
    method (a run normally probes its own final checkpoint as it ends). A run whose checkpoint is
    not on this machine is trained again from its summary's options, and its probe is kept only
    where the retrained run reproduces the summary's final AP exactly (the same weights)."""
    from .sharpness import METHOD

    log = log or _say
    summaries = summaries or run_summary.summaries_dir(suite, out)
    plan = suite.sharpness
    todo = []
    for name in plan.arms:
        for seed in plan.seeds.get(name, ()):
            run = Run(name, seed)
            summary = run_summary.read_summary(summaries, run)
            if summary is None or summary["status"] != "ok" or (summary.get("sharpness") or {}).get("method") == METHOD:
                continue
            vdir = os.path.join(out, run.key)
            ckpt = os.path.join(vdir, "model_final.pth")
            probe = _sharpness_of(suite, run)  # the plan's (batches, max_iters, tol)
            if os.path.exists(ckpt):
                cmd = [sys.executable, "-m", "zenith_det.race.run_process", "--sharpness", ckpt,
                       os.path.join(vdir, SHARPNESS), *map(str, probe)]
                what = "flatness probe"
            else:
                if os.path.isdir(vdir):
                    shutil.rmtree(vdir)
                cmd = child_command(suite.arm(name).config, list(summary["options"]) + ["OUTPUT_DIR", vdir], False, probe)
                what = "training again for its flatness probe"

            def done(rc, run=run, vdir=vdir, summary=summary):
                sharp = run_summary._load_json(os.path.join(vdir, SHARPNESS))
                if rc != 0 or not sharp:
                    log(f"[race] {run.describe(suite.labels)}: flatness probe failed (exit {rc})")
                    return
                again = run_summary.build_summary(suite, run, vdir, list(summary["options"]), summary.get("lr")) \
                    if os.path.exists(os.path.join(vdir, STATS)) else None
                if again is not None and not _reproduces(again, summary):
                    log(f"[race] {run.describe(suite.labels)}: trained again, it does not reproduce its summary's "
                        "final AP: its probe is not used")
                    return
                summary["sharpness"] = run_summary._sharpness(sharp)
                run_summary.write_summary(summaries, run, summary)

            todo.append(_Job(run, vdir, cmd, False, done, what=what))
    if todo:
        log(f"[race] flatness probe of {len(todo)} final checkpoint(s)")
        _execute(todo, jobs, out, log, {}, labels=suite.labels)


def _reproduces(again: dict, summary: dict) -> bool:
    """A retrained run's summary gives the committed summary's final metrics, bit for bit."""
    final = again.get("final") or {}
    recorded = summary.get("final") or {}
    keys = [k for k in recorded if isinstance(recorded[k], (int, float))]
    return bool(keys) and all(k in final and float(final[k]) == float(recorded[k]) for k in keys)


def _tail(path: str, n: int = 6) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""
