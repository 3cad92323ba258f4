#!/usr/bin/env python
"""Race optimizers on one config under the same wall-clock budget; tabulate and plot.

    # the reduced-scale reproduction (docs/RESULTS.md and docs/figures/), ~35 CPU minutes
    python tools/compare.py --suite paper --out output/compare --report docs/RESULTS.md

    # your own race: any config, any SOLVER.OPTIMIZER keys, trailing KEY VALUE for all runs
    python tools/compare.py --config configs/synthetic/mask_rcnn_zenith.yaml \\
        --optimizers ZENITH SGD_MULTISTEP SGD_COSINE DADAPT_SGD PRODIGY DOG \\
        --budget-hours 0.05 --out output/my_race --report output/my_race/RESULTS.md \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)"

Every variant is the base config plus its own overrides (the optimizer, its lr
and schedule), trained in its own process into --out/<variant>/ with the same
SOLVER.MAX_TIME_HOURS, a large SOLVER.MAX_ITER, and evaluation every
TEST.EVAL_PERIOD_MINUTES of wall clock (so every run gets the same number of
evaluations, whatever its speed). The runner adds a probe hook that logs
"wall_seconds" and "lr_effective" to metrics.json, counts host syncs inside
optimizer.step() for a few steps, and writes compare_stats.json (iterations,
times, peak memory, optimizer state bytes per parameter) when the run ends.

It is resumable: a variant with compare_stats.json is done and skipped; one
with a checkpoint is continued with --resume (its budget counts across); one
that failed is recorded (compare_failed.json) and retried only with --retry-failed.
The report (a markdown table and the figures) is rebuilt from what is on disk.

SGD's hand-made schedules need MAX_ITER in advance: for a variant with
"MAX_ITER auto" it is 0.95 x the iterations the suite's reference variant
(ZENITH, run first, same budget and step cost) completed, and the multi-step
decays sit at 2/3 and 8/9 of it (detectron2's 1x: 60k and 80k of 90k).
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import plot_metrics  # noqa: E402  (tools/plot_metrics.py)
from zenith_det import exit_codes  # noqa: E402
from zenith_det.solver import OPTIMIZER_REGISTRY, lr_schedule_name, optimizer_spec  # noqa: E402
from zenith_det.utils.fileio import atomic_write_json  # noqa: E402

STATS = "compare_stats.json"
# methods with no learning rate (their spec's has_lr): their BASE_LR and schedule are ignored
NO_LR = {name for name, spec in OPTIMIZER_REGISTRY if not spec.has_lr}
FAILED = "compare_failed.json"
# host syncs are counted in SYNC_STEPS optimizer steps from the run's SYNC_START-th step
# (past the first steps, where several methods initialise state with a host read)
SYNC_START, SYNC_STEPS = 10, 5
SYNC_METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


def _preset(key: str, **overrides):
    """(SOLVER.OPTIMIZER, overrides) for --optimizers: the spec's default schedule and its
    preset BASE_LR (what its authors recommend; "<k>x" for k x the config's BASE_LR; none
    where the config's is meant), then `overrides`."""
    spec = optimizer_spec(key)
    ov = {"SOLVER.LR_SCHEDULER_NAME": spec.lr_schedule}
    if spec.has_lr and spec.preset_lr is not None:
        ov["SOLVER.BASE_LR"] = spec.preset_lr
    elif spec.has_lr and spec.preset_lr_factor != 1.0:
        ov["SOLVER.BASE_LR"] = f"{spec.preset_lr_factor:g}x"
    return spec.name, {**ov, **overrides}


# SOLVER.OPTIMIZER shorthand for --optimizers: key -> (optimizer, overrides), from the
# optimizers' specs (zenith_det/solver/spec.py); the SGD variants name their schedule.
OPTIMIZER_PRESETS = {
    "ZENITH": _preset("ZENITH"),
    "SGD": _preset("SGD", **{"SOLVER.LR_SCHEDULER_NAME": "WarmupConstantLR"}),
    "SGD_MULTISTEP": _preset("SGD", **{"SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR", "SOLVER.MAX_ITER": "auto"}),
    "SGD_COSINE": _preset("SGD", **{"SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR", "SOLVER.MAX_ITER": "auto"}),
    **{key: _preset(key) for key in (
        "DADAPT_SGD", "PRODIGY", "DOG", "LDOG", "DOWG", "COCOB", "ALIG", "SCHEDULEFREE_SGD", "SCHEDULEFREE_SGD_PO")},
}


class Variant:
    def __init__(self, name: str, label: str, optimizer: str, overrides: Dict[str, object], group: str = "main"):
        self.name, self.label, self.optimizer, self.group = name, label, optimizer, group
        self.overrides = OrderedDict(overrides)
        self.also: Sequence[str] = ()  # other groups whose figures include this run (as the reference)

    def in_group(self, group: str) -> bool:
        return self.group == group or group in self.also


def preset_variant(key: str, group: str = "main", name: Optional[str] = None, label: Optional[str] = None, **extra):
    if key not in OPTIMIZER_PRESETS:
        raise SystemExit(f"error: --optimizers: unknown {key!r}; choose from {', '.join(OPTIMIZER_PRESETS)}")
    optimizer, overrides = OPTIMIZER_PRESETS[key]
    overrides = {**overrides, **extra}
    return Variant(name or key.lower(), label or key.replace("_", " "), optimizer, overrides, group)


def paper_suite() -> List[Variant]:
    """ZENITH against the hand-made schedules and automatic-LR methods; weight decay on/off;
    ZENITH's sensitivity to eta_0 and W. The synthetic config's ZENITH has eta_0 0.02, W 100."""
    v = [
        preset_variant("ZENITH", label="ZENITH (eta0 0.02, W 100)"),
        preset_variant("SGD_MULTISTEP", label="SGD multi-step (lr 0.02)"),
        preset_variant("SGD_COSINE", label="SGD cosine (lr 0.02)"),
        preset_variant("DADAPT_SGD", label="D-Adapt SGD"),
        preset_variant("PRODIGY", label="Prodigy"),
        preset_variant("DOG", label="DoG"),
        preset_variant("SCHEDULEFREE_SGD", label="schedule-free SGD (lr 0.2)"),
        preset_variant("COCOB", label="COCOB"),
        preset_variant("ZENITH", "weight decay", "zenith_wd0", "ZENITH, weight decay 0", **{"SOLVER.WEIGHT_DECAY": 0.0}),
        preset_variant("SGD_MULTISTEP", "weight decay", "sgd_multistep_wd0", "SGD multi-step, weight decay 0",
                       **{"SOLVER.WEIGHT_DECAY": 0.0}),
        preset_variant("ZENITH", "eta0", "zenith_lr0.005", "ZENITH eta0 0.005", **{"SOLVER.BASE_LR": 0.005}),
        preset_variant("ZENITH", "eta0", "zenith_lr0.08", "ZENITH eta0 0.08", **{"SOLVER.BASE_LR": 0.08}),
        preset_variant("ZENITH", "W", "zenith_w20", "ZENITH W 20", **{"SOLVER.ZENITH.WINDOW": 20}),
        preset_variant("ZENITH", "W", "zenith_w500", "ZENITH W 500", **{"SOLVER.ZENITH.WINDOW": 500}),
    ]
    # the same ZENITH run with another seed: how far apart two runs land by chance alone
    v.append(preset_variant("ZENITH", "seed", "zenith_seed1", "ZENITH, SEED 1", **{"SEED": 1}))
    v[0].also = ("weight decay", "eta0", "W", "seed")
    v[1].also = ("weight decay",)
    return v


SUITES = {"paper": paper_suite}
PAPER_CONFIG = "configs/synthetic/mask_rcnn_zenith.yaml"
# Groups of the paper suite and which variants each figure set compares (the
# reference ZENITH run appears in each).
GROUP_TITLES = OrderedDict(
    [
        ("main", "ZENITH against hand-made schedules and automatic-LR methods"),
        ("weight decay", "regularisation: weight decay 1e-4 against 0"),
        ("eta0", "sensitivity of ZENITH to eta0"),
        ("W", "sensitivity of ZENITH to the window W"),
        ("seed", "run-to-run noise: ZENITH with SEED 0 and SEED 1"),
    ]
)


# ----------------------------------------------------------------------------------------
# measurements (used in the training process; importable for tests)


@contextlib.contextmanager
def count_host_syncs():
    """Count Python-level calls that make the host wait for a tensor's value
    (Tensor.item/__bool__/__float__/__int__/__index__/tolist/numpy) inside the block.

    Yields a dict whose "count" grows. On a GPU each is a device sync; on the CPU it
    counts the same calls, which is what would sync on a GPU.
    """
    import torch

    counter = {"count": 0, "by_method": {}}
    saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            counter["count"] += 1
            counter["by_method"][name] = counter["by_method"].get(name, 0) + 1
            return fn(self, *args, **kwargs)

        return counted

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counter
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


class StepSyncCounter:
    """Counts host syncs inside `optimizer.step()` (its closure included), step by step,
    through the optimizer's step pre/post hooks. Nested step() calls (a subclass calling
    its parent's step) count once."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.counts: List[int] = []
        self._depth = 0
        self._ctx = None
        self._counter = None
        self._handles = []

    def start(self):
        self._handles = [
            self.optimizer.register_step_pre_hook(self._pre),
            self.optimizer.register_step_post_hook(self._post),
        ]
        return self

    def stop(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._ctx is not None:  # a step that raised
            self._ctx.__exit__(None, None, None)
            self._ctx, self._depth = None, 0

    def _pre(self, optimizer, args, kwargs):
        self._depth += 1
        if self._depth == 1:
            self._ctx = count_host_syncs()
            self._counter = self._ctx.__enter__()

    def _post(self, optimizer, args, kwargs):
        self._depth -= 1
        if self._depth == 0 and self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
            self.counts.append(self._counter["count"])


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in optimizer.state_dict() (state and param_groups), each
    storage counted once; the parameters themselves are not part of it."""
    import torch

    seen = set()
    total = 0
    params = {p.data_ptr() for g in optimizer.param_groups for p in g["params"]}

    def walk(obj):
        nonlocal total
        if torch.is_tensor(obj):
            key = (obj.data_ptr(), obj.numel(), obj.dtype)
            if obj.numel() and key not in seen and obj.data_ptr() not in params:
                seen.add(key)
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if k != "params":
                    walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(optimizer.state_dict())
    return total


def num_params(optimizer) -> int:
    return sum(p.numel() for g in optimizer.param_groups for p in g["params"])


def peak_memory():
    """(bytes, what): CUDA max_memory_allocated on a GPU, else this process's max RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated(), "CUDA max_memory_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kib * 1024, "max RSS of the training process (CPU; data-loader workers not included)"


# ----------------------------------------------------------------------------------------
# the training process


def _probe_hook_class():
    from zenith_det.engine.train_loop import HookBase

    class CompareProbe(HookBase):
        """Logs wall_seconds (the budget clock, evaluations included) at each log period,
        eval_wall_seconds after each evaluation, lr_effective at the log period; counts
        host syncs in a few optimizer steps."""

        def __init__(self, log_period: int, sync_start: int, sync_steps: int):
            self.log_period = log_period
            self.sync_start, self.sync_steps = sync_start, sync_steps
            self.sync_counter = None
            self._last_eval = None

        def before_step(self):
            done_before = self.trainer.iter - self.trainer.start_iter
            if self.sync_counter is None and done_before >= self.sync_start:
                self.sync_counter = StepSyncCounter(self.trainer.optimizer).start()

        def after_step(self):
            t = self.trainer
            if self.sync_counter is not None and self.sync_counter._handles and len(self.sync_counter.counts) >= self.sync_steps:
                self.sync_counter.stop()
            clock = t.clock
            evaluated = clock.eval_seconds is not None and clock.eval_seconds is not self._last_eval
            if evaluated:
                self._last_eval = clock.eval_seconds
            if evaluated:
                # its own key: the writer keeps only the newest value of a key between two
                # writes, so "wall_seconds" at the next log period would hide this one
                t.storage.put_scalar("eval_wall_seconds", clock.elapsed(), smoothing_hint=False)
            if (t.iter + 1) % self.log_period == 0:
                t.storage.put_scalar("wall_seconds", clock.elapsed(), smoothing_hint=False)
            if (t.iter + 1) % self.log_period == 0:
                lr = t.optimizer_spec.effective_lr(t.optimizer)
                if lr is not None and math.isfinite(lr):
                    t.storage.put_scalar("lr_effective", lr, smoothing_hint=False)

        def after_train(self):
            if self.sync_counter is not None:
                self.sync_counter.stop()
            self.trainer.storage.put_scalar("wall_seconds", self.trainer.clock.elapsed(), smoothing_hint=False)

    return CompareProbe


def run_child(config: str, opts: List[str], resume: bool) -> int:
    """Train one variant in this process and write compare_stats.json (or compare_failed.json)."""
    import torch

    from zenith_det.config import load_config
    from zenith_det.engine import Trainer, default_setup, hooks

    torch.set_num_threads(int(os.environ.get("ZENITH_COMPARE_THREADS", torch.get_num_threads())))
    cfg = load_config(config, opts)
    default_setup(cfg, resume=resume)
    cfg.freeze()
    probe_class = _probe_hook_class()

    class CompareTrainer(Trainer):
        def build_hooks(self):
            built = super().build_hooks()
            self.probe = probe_class(cfg.LOG_PERIOD, SYNC_START, SYNC_STEPS)
            # before the writer, so what it logs at an iteration is written with it
            at = next((i for i, h in enumerate(built) if isinstance(h, hooks.PeriodicWriter)), len(built))
            return built[:at] + [self.probe] + built[at:]

    started = time.perf_counter()
    trainer = CompareTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    status, error = "ok", None
    try:
        trainer.train()
    except FloatingPointError as e:
        status, error = "diverged", str(e)
    if trainer.preempted:
        return PREEMPTED  # checkpointed; the next invocation resumes it
    times = trainer.storage.history("time").values() if trainer.storage is not None else []
    step_times = sorted(v for v, _ in times)
    mem, mem_kind = peak_memory()
    syncs = trainer.probe.sync_counter.counts if trainer.probe.sync_counter is not None else []
    stats = {
        "status": status,
        "error": error,
        "optimizer": cfg.SOLVER.OPTIMIZER,
        "optimizer_class": type(trainer.optimizer).__name__,
        "optimizer_description": trainer.optimizer_spec.description,
        "schedule": lr_schedule_name(cfg),
        "base_lr": cfg.SOLVER.BASE_LR,
        "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        "window": cfg.SOLVER.ZENITH.WINDOW,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "budget_hours": cfg.SOLVER.MAX_TIME_HOURS,
        "iterations": trainer.iter,
        "stop_reason": trainer.stop_reason or ("max_iter" if status == "ok" else status),
        "wall_seconds": trainer.clock.elapsed(),
        "process_seconds_this_session": time.perf_counter() - started,
        "step_seconds_median": step_times[len(step_times) // 2] if step_times else None,
        "step_seconds_mean": sum(step_times) / len(step_times) if step_times else None,
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "state_bytes": optimizer_state_bytes(trainer.optimizer),
        "num_params": num_params(trainer.optimizer),
        "syncs_per_step": syncs,
        "sync_steps_from": trainer.probe.sync_start,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
    }
    stats["state_bytes_per_param"] = stats["state_bytes"] / max(stats["num_params"], 1)
    atomic_write_json(stats, os.path.join(cfg.OUTPUT_DIR, STATS if status == "ok" else FAILED), indent=1)
    return 0 if status == "ok" else 3


# ----------------------------------------------------------------------------------------
# the orchestrating process


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def resolve_overrides(variant: Variant, base_cfg, out: str, reference_iters: Optional[int]) -> List[str]:
    ov = OrderedDict(variant.overrides)
    ov["SOLVER.OPTIMIZER"] = variant.optimizer
    lr = ov.get("SOLVER.BASE_LR")
    if isinstance(lr, str) and lr.endswith("x"):  # a preset's multiple of the config's BASE_LR
        ov["SOLVER.BASE_LR"] = float(lr[:-1]) * base_cfg.SOLVER.BASE_LR
    if ov.get("SOLVER.MAX_ITER") == "auto":
        if not reference_iters:
            raise RuntimeError(f"{variant.name}: MAX_ITER auto needs the reference run's iteration count first")
        n = max(int(0.95 * reference_iters), 10)
        ov["SOLVER.MAX_ITER"] = n
        if ov.get("SOLVER.LR_SCHEDULER_NAME") == "WarmupMultiStepLR":
            ov["SOLVER.STEPS"] = f"({round(n * 2 / 3)}, {round(n * 8 / 9)})"
    ov["OUTPUT_DIR"] = os.path.join(out, variant.name)
    opts = []
    for k, v in ov.items():
        opts += [k, _fmt_value(v)]
    return opts


def run_variants(args, variants: List[Variant], common: List[str]) -> None:
    from zenith_det.config import load_config

    base_cfg = load_config(args.config, common)
    reference_iters = None
    for i, variant in enumerate(variants):
        vdir = os.path.join(args.out, variant.name)
        stats_path = os.path.join(vdir, STATS)
        if i == 0 and os.path.exists(stats_path):
            reference_iters = json.load(open(stats_path))["iterations"]
        if args.only and variant.name not in args.only:
            continue
        if os.path.exists(stats_path):
            print(f"[compare] {variant.name}: done already, skipped", flush=True)
            continue
        if os.path.exists(os.path.join(vdir, FAILED)):
            if not args.retry_failed:
                print(f"[compare] {variant.name}: failed before ({FAILED}); --retry-failed to run again", flush=True)
                continue
            shutil.rmtree(vdir)
        resume = os.path.exists(os.path.join(vdir, "last_checkpoint"))
        if os.path.isdir(vdir) and not resume:
            shutil.rmtree(vdir)  # a run killed before its first checkpoint: start clean
        try:
            opts = common + resolve_overrides(variant, base_cfg, args.out, reference_iters)
        except RuntimeError as e:
            print(f"[compare] {variant.name}: skipped: {e}", flush=True)
            continue
        os.makedirs(vdir, exist_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", args.config] + (["--resume"] if resume else []) + ["--"] + opts
        with open(os.path.join(vdir, "compare_command.txt"), "w") as f:
            f.write(" ".join(_quote(c) for c in cmd) + "\n")
        print(f"[compare] {variant.name}: {'resuming' if resume else 'training'} ({datetime.datetime.now():%H:%M:%S})", flush=True)
        start = time.perf_counter()
        with open(os.path.join(vdir, "compare_stdout.log"), "a") as log:
            rc = run_process(cmd, log)
        print(f"[compare] {variant.name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc == PREEMPTED:
            raise SystemExit(f"[compare] {variant.name} was stopped and checkpointed; run the same command to resume")
        if rc != 0 and not os.path.exists(os.path.join(vdir, FAILED)) and not os.path.exists(stats_path):
            atomic_write_json({"status": "failed", "returncode": rc, "error": _tail(os.path.join(vdir, "compare_stdout.log"))},
                              os.path.join(vdir, FAILED), indent=1)
        if i == 0 and os.path.exists(stats_path):
            reference_iters = json.load(open(stats_path))["iterations"]


PREEMPTED = exit_codes.PREEMPTED  # "stopped by a signal, checkpoint written"


def run_process(cmd: List[str], log) -> int:
    """Run one variant; on Ctrl-C let it finish its iteration and checkpoint (it got the
    SIGINT too) rather than killing it, so the next invocation resumes it."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # same cwd: relative paths agree
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print("[compare] interrupted: waiting for the run to write its checkpoint", flush=True)
        proc.wait()
        return PREEMPTED


def _quote(s: str) -> str:
    return s if s and all(c.isalnum() or c in "-_./=:," for c in s) else repr(s)


def _tail(path: str, n: int = 6) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------
# the report


def collect(out: str, variants: List[Variant]) -> "OrderedDict[str, dict]":
    """{variant name: {"variant", "stats" or None, "failed" or None, "records"}} for what is on disk."""
    runs = OrderedDict()
    for v in variants:
        vdir = os.path.join(out, v.name)
        stats = _load_json(os.path.join(vdir, STATS))
        failed = _load_json(os.path.join(vdir, FAILED))
        metrics = os.path.join(vdir, "metrics.json")
        records = plot_metrics.load_metrics(metrics) if os.path.exists(metrics) else []
        if stats is None and failed is None and not records:
            continue
        runs[v.name] = {"variant": v, "stats": stats, "failed": failed, "records": records}
    return runs


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def ap_summary(records: Sequence[dict], key: str):
    """(final, best) of an AP key, or (None, None)."""
    _, ys = plot_metrics.series(records, key)
    if not ys:
        return None, None
    return ys[-1], max(ys)


def _f(v, fmt="{:.1f}", missing="–"):
    return missing if v is None else fmt.format(v)


def results_table(runs: "OrderedDict[str, dict]") -> str:
    tasks = [(k, n) for k, n in plot_metrics.AP_KEYS if any(plot_metrics.series(r["records"], k)[0] for r in runs.values())]
    head = ["variant", "optimizer", "schedule", "BASE_LR", "iters"]
    for _, name in tasks:
        head += [f"{name} final", f"{name} best"]
    head += ["wall-clock (min)", "s / iter", "peak mem (MiB)", "state B/param", "syncs / step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for name, run in runs.items():
        st = run["stats"] or run["failed"] or {}
        recs = run["records"]
        status = "" if run["stats"] else f" **({(run['failed'] or {}).get('status', 'unfinished')})**"
        row = [
            f"{run['variant'].label}{status}",
            str(st.get("optimizer", run["variant"].optimizer)),
            _schedule_name(st.get("schedule")),
            "n/a" if st.get("optimizer") in NO_LR else _f(st.get("base_lr"), "{:g}"),
            _f(st.get("iterations"), "{:d}"),
        ]
        for key, _ in tasks:
            final, best = ap_summary(recs, key)
            row += [_f(final), _f(best)]
        syncs = st.get("syncs_per_step") or []
        sync_txt = "–" if not syncs else (str(syncs[0]) if min(syncs) == max(syncs) else f"{min(syncs)}–{max(syncs)}")
        row += [
            _f(st.get("wall_seconds") and st["wall_seconds"] / 60),
            _f(st.get("step_seconds_median"), "{:.3f}"),
            _f(st.get("peak_memory_bytes") and st["peak_memory_bytes"] / 2**20, "{:.0f}"),
            _f(st.get("state_bytes_per_param"), "{:.2f}"),
            sync_txt,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _schedule_name(name):
    return {
        "WarmupConstantLR": "warmup + constant",
        "WarmupMultiStepLR": "warmup + multi-step",
        "WarmupCosineLR": "warmup + cosine",
    }.get(name or "", name or "–")


def make_figures(runs, fig_dir: str, groups: "OrderedDict[str, str]", reference: Optional[str]) -> Dict[str, List[str]]:
    """One set of the four figures per group."""
    out = OrderedDict()
    for group, title in groups.items():
        members = OrderedDict(
            (r["variant"].label, _records_for_plots(r)) for r in runs.values() if r["records"] and r["variant"].in_group(group)
        )
        if not members or (group != "main" and len(members) < 2):
            continue
        prefix = "" if group == "main" else group.replace(" ", "_").lower() + "_"
        out[group] = plot_metrics.plot_runs(members, fig_dir, title=title, prefix=prefix)
    return out


def _records_for_plots(run) -> List[dict]:
    """A run without any "lr_effective" has no single step size (COCOB): its scheduled
    "lr" is ignored by the method, so it is left out of the step-size figure."""
    records = run["records"]
    if any("lr_effective" in r for r in records):
        return records
    return [{k: v for k, v in r.items() if k != "lr"} for r in records]


def observations(runs, reference: Optional[str]) -> List[str]:
    """Sentences computed from the numbers (so a rerun cannot leave stale prose)."""
    notes = []

    def final(name, key="bbox/AP"):
        # finished runs only: a diverged or interrupted run's last AP is no result
        return ap_summary(runs[name]["records"], key)[0] if name in runs and runs[name]["stats"] else None

    main = [n for n, r in runs.items() if r["variant"].group == "main"]
    if reference in runs and final(reference) is not None and len([n for n in main if final(n) is not None]) > 1:
        first = {key: max((n for n in main if final(n, key) is not None), key=lambda n: final(n, key))
                 for key in ("bbox/AP", "segm/AP")}
        won = all(first[k] == reference for k in first)
        notes.append(
            "**Verdict at this scale:** the paper's claim (ZENITH ahead of the hand-made schedules and the "
            f"automatic-LR methods at the same wall-clock budget) is {'reproduced' if won else 'not reproduced'} "
            f"here: the best final box AP is {runs[first['bbox/AP']]['variant'].label}'s, the best final mask AP "
            f"{runs[first['segm/AP']]['variant'].label}'s."
        )
    for key, label in (("bbox/AP", "box AP"), ("segm/AP", "mask AP")):
        scored = sorted(((final(n, key), n) for n in main if final(n, key) is not None), reverse=True)
        if not scored:
            continue
        ranking = ", ".join(f"{runs[n]['variant'].label} {v:.1f}" for v, n in scored)
        notes.append(f"Final {label}, main comparison, best first: {ranking}.")
        if reference in dict((n, v) for v, n in scored):
            rank = [n for _, n in scored].index(reference) + 1
            notes.append(f"ZENITH ranks {rank} of {len(scored)} on final {label}.")
    if reference in runs and final(reference) is not None:
        hand = [n for n in main if runs[n]["variant"].optimizer == "SGD" and final(n) is not None]
        auto = [n for n in main if n != reference and n not in hand and final(n) is not None]
        for names, what in ((hand, "the best hand-made schedule"), (auto, "the best automatic-LR method")):
            if names:
                best = max(names, key=final)
                notes.append(
                    f"ZENITH's final box AP is {final(reference) - final(best):+.1f} points against {what} "
                    f"({runs[best]['variant'].label}, {final(best):.1f})."
                )
    best_final = max((final(n) for n in main if final(n) is not None), default=None)
    if best_final:
        target = 0.9 * best_final
        reached = []
        for n in (n for n in main if final(n) is not None):
            hours, _ = plot_metrics.wall_hours(runs[n]["records"])
            xs, ys = plot_metrics.series(runs[n]["records"], "bbox/AP")
            first = next((hours[i] * 60 for i, y in zip(xs, ys) if y >= target), None)
            reached.append((first if first is not None else math.inf, n))
        listed = ", ".join(
            f"{runs[n]['variant'].label} {'not reached' if m == math.inf else f'{m:.1f} min'}" for m, n in sorted(reached)
        )
        notes.append(f"Wall-clock time to a box AP of {target:.1f} (90% of the best final), at the evaluations: {listed}.")
    if reference in runs and final(reference) is not None:
        xs, mult = plot_metrics.series(runs[reference]["records"], "zenith/multiplier")
        _, lr = plot_metrics.series(runs[reference]["records"], "lr_effective")
        if mult and lr:
            notes.append(
                f"ZENITH's multiplier m_t ends at {mult[-1]:.2f} (lowest {min(mult):.2f}), so its step ends at "
                f"{lr[-1]:.2g}: it decays on its own, as the hand-made schedules do by design."
            )
    seeds = [n for n, r in runs.items() if r["variant"].in_group("seed") and final(n) is not None]
    if len(seeds) >= 2:
        for key, label in (("bbox/AP", "box AP"), ("segm/AP", "mask AP")):
            vals = [final(n, key) for n in seeds if final(n, key) is not None]
            if len(vals) >= 2:
                notes.append(
                    f"Seed noise: the same ZENITH run with two seeds ends {max(vals) - min(vals):.1f} {label} points apart; "
                    "differences of that order between variants say nothing."
                )
    for n, r in runs.items():
        # weight decay off against the same variant with it on
        on = n[: -len("_wd0")] if n.endswith("_wd0") else None
        if r["variant"].group == "weight decay" and on in runs and final(n) is not None and final(on) is not None:
            for key, label in (("bbox/AP", "box AP"), ("segm/AP", "mask AP")):
                a, b = final(on, key), final(n, key)
                if a is not None and b is not None:
                    notes.append(
                        f"Weight decay, {runs[on]['variant'].label}: final {label} {a:.1f} with weight decay 1e-4, "
                        f"{b:.1f} without ({b - a:+.1f})."
                    )
    for group, label in (("eta0", "eta0"), ("W", "W")):
        members = [n for n, r in runs.items() if r["variant"].in_group(group)]
        vals = [(final(n), n) for n in members if final(n) is not None]
        if len(vals) >= 2:
            lo, hi = min(vals), max(vals)
            listed = ", ".join(f"{runs[n]['variant'].label} {v:.1f}" for v, n in vals)
            notes.append(f"{label}: final box AP ranges over {hi[0] - lo[0]:.1f} points ({listed}).")
    failed = [runs[n]["variant"].label for n, r in runs.items() if r["failed"]]
    if failed:
        notes.append("Failed (see the table and each run's compare_failed.json): " + ", ".join(failed) + ".")
    return notes


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def write_report(args, variants, runs, command: str) -> None:
    report_dir = os.path.dirname(os.path.abspath(args.report))
    fig_dir = args.figures or os.path.join(report_dir, "figures")
    reference = variants[0].name if variants else None
    groups = OrderedDict((g, t) for g, t in GROUP_TITLES.items() if any(v.group == g for v in variants))
    figures = make_figures(runs, fig_dir, groups, reference)
    any_stats = next((r["stats"] for r in runs.values() if r["stats"]), {}) or {}
    lines = [
        "# " + (args.title or "ZENITH against other optimizers, at a fixed wall-clock budget"),
        "",
        "Generated by `tools/compare.py`; regenerate everything on this page (runs, table, figures) with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "Finished variants are not rerun (delete their folders under the output folder to redo them).",
        "",
        "## Setup",
        "",
        f"- **Machine**: {machine_description()}; {any_stats.get('threads', '?')} torch threads, "
        f"device `{any_stats.get('device', '?')}`.",
        f"- **Base config**: `{os.path.relpath(args.config, REPO) if os.path.isabs(args.config) else args.config}`"
        + (f" with `{' '.join(args.opts)}`" if args.opts else "") + ".",
        f"- **Budget**: {args.budget_hours:g} h of wall clock per run (SOLVER.MAX_TIME_HOURS; the final "
        f"evaluation fits inside it), evaluation every {args.eval_minutes:g} min of wall clock, "
        "SOLVER.MAX_ITER 10^6 except for SGD's decaying schedules (below). One seed (SEED 0) per variant"
        + ("; the reference ZENITH run is repeated with SEED 1 to show run-to-run noise." if any(
            v.group == "seed" for v in variants) else "."),
        "- **SGD schedules**: MAX_ITER = 0.95 x the iterations the ZENITH reference run completed in the "
        "same budget (the two steps cost the same, so the schedule ends inside the budget); multi-step "
        "decays x0.1 at 2/3 and 8/9 of it (detectron2's 1x proportions); cosine decays to 0 at MAX_ITER. "
        "Both warm up linearly over SOLVER.WARMUP_ITERS, as every variant does.",
        "- **Automatic-LR methods** run at their authors' default scale (BASE_LR 1.0 for D-Adapt SGD, "
        "Prodigy and DoG; COCOB has none) with warmup then a constant schedule; schedule-free SGD at "
        "10x SGD's lr (its authors suggest 10-50x). None of them was tuned here.",
        "- **Columns**: AP is COCO AP (%) on the synthetic validation set at the last evaluation "
        "(final) and the best of the run's evaluations; wall-clock is the budget clock at the end "
        "(training, evaluations, checkpoints); s / iter is the median training step; peak memory is "
        f"{any_stats.get('peak_memory_kind', 'see compare_stats.json')}; state B/param is the bytes of "
        "every tensor in the optimizer's state_dict() after training, per trainable parameter; "
        "syncs / step counts Tensor.item/__bool__/__float__/__int__/__index__/tolist/numpy calls inside "
        f"optimizer.step() (closure included) over {SYNC_STEPS} steps from the run's step "
        f"{any_stats.get('sync_steps_from', 10)} (on a GPU each one would stall the host).",
        "",
        "## Results",
        "",
        results_table(runs),
        "",
    ]
    notes = observations(runs, reference)
    if notes:
        lines += ["Read from the table (computed, not hand-written):", ""] + [f"- {n}" for n in notes] + [""]
    for group, paths in figures.items():
        lines += [f"### {groups[group]}", ""]
        for p in paths:
            rel = os.path.relpath(p, report_dir)
            lines.append(f"![{os.path.basename(p)}]({rel})")
        lines.append("")
    if args.notes and os.path.exists(args.notes):
        with open(args.notes) as f:
            lines += [f.read().rstrip(), ""]
    lines += [
        "## Caveats",
        "",
        "- One seed per variant: differences of a few AP points between runs can be seed noise (one "
        "repeated run is a rough gauge of it, not an estimate of its spread); nothing here is a significance test.",
        "- Nothing was tuned: every method runs at its authors' default or the config's lr, once. A method's "
        "rank here says how it does out of the box on this problem, not how it does at its best.",
        "- The step-size figure puts different quantities on one axis: SGD-like methods' lr (ZENITH's "
        "eta0 x m_t, D-Adapt's d x lr / ||g_0||, DoG's eta, schedule-free's lr for its base sequence) next "
        "to Prodigy's Adam-scale d x lr; COCOB has no step size and is left out.",
        "- A tiny model (tiny_fpn backbone, ~150 px images) on synthetic shapes, trained for minutes on "
        "a shared CPU: what holds here need not hold for R50-FPN on COCO for 24 h, the paper's setting.",
        "- Wall-clock budgets on a shared machine: the number of iterations a run gets depends on the "
        "load while it ran (see iters and s / iter).",
        "- Peak memory on the CPU is the training process's max RSS: it is dominated by the framework "
        "and the data, not by the optimizer (see state B/param for that).",
        "- DoG's authors pair it with iterate averaging, and schedule-free's BatchNorm statistics should be "
        "recomputed at the averaged weights; neither is done here, and both may cost those methods AP.",
        "",
    ]
    os.makedirs(report_dir, exist_ok=True)
    with open(args.report, "w") as f:
        f.write("\n".join(lines))
    print(f"[compare] wrote {args.report} and {sum(len(p) for p in figures.values())} figures in {fig_dir}")


# ----------------------------------------------------------------------------------------


def build_variants(args) -> List[Variant]:
    if args.suite:
        return SUITES[args.suite]()
    if not args.optimizers:
        raise SystemExit("error: give --suite or --optimizers")
    return [preset_variant(k) for k in args.optimizers]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        # internal: tools/compare.py --child CONFIG [--resume] -- KEY VALUE ...
        config, rest = argv[1], argv[2:]
        resume = rest[:1] == ["--resume"]
        rest = rest[1:] if resume else rest
        return run_child(config, rest[1:] if rest[:1] == ["--"] else rest, resume)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), help="a predefined set of variants")
    parser.add_argument("--config", help=f"base config (default for --suite paper: {PAPER_CONFIG})")
    parser.add_argument("--optimizers", nargs="+", help=f"variants by key: {', '.join(OPTIMIZER_PRESETS)}")
    parser.add_argument("--out", default="output/compare", help="one folder per variant under it")
    parser.add_argument("--report", help="markdown report to write (figures go next to it, in figures/)")
    parser.add_argument("--figures", help="folder for the PNGs (default: figures/ beside --report)")
    parser.add_argument("--budget-hours", type=float, default=0.035, help="SOLVER.MAX_TIME_HOURS of every run")
    parser.add_argument("--eval-minutes", type=float, default=0.6, help="TEST.EVAL_PERIOD_MINUTES of every run")
    parser.add_argument("--only", nargs="+", help="run only these variants (the report still covers all)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; rebuild the report")
    parser.add_argument("--retry-failed", action="store_true", help="rerun variants that failed before")
    parser.add_argument("--notes", help="a markdown file whose text is added to the report")
    parser.add_argument("--title", default="", help="the report's title")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    args.config = args.config or PAPER_CONFIG
    if not os.path.isabs(args.config) and not os.path.exists(args.config):
        args.config = os.path.join(REPO, args.config)
    variants = build_variants(args)
    if args.list:
        for v in variants:
            print(f"{v.name:22s} [{v.group}] {v.optimizer} {dict(v.overrides)}")
        return 0
    common = [
        "SOLVER.MAX_TIME_HOURS", repr(args.budget_hours),
        "SOLVER.MAX_ITER", "1000000",
        "TEST.EVAL_PERIOD", "0",
        "TEST.EVAL_PERIOD_MINUTES", repr(args.eval_minutes),
    ] + list(args.opts)
    if not args.report_only:
        run_variants(args, variants, common)
    if args.report:
        runs = collect(args.out, variants)
        command = "python tools/compare.py " + " ".join(_quote(a) for a in argv)
        write_report(args, variants, runs, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
