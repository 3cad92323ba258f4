"""One run of a race, in its own process (started by `race.runner.run_suite`).

    python -m zenith_det.race.run_process CONFIG [--resume] [--sharpness-after BATCHES ITERS TOL] -- KEY VALUE ...
    python -m zenith_det.race.run_process --sharpness CHECKPOINT OUT.json BATCHES ITERS [TOL]

Trains CONFIG with the options through the ordinary Trainer plus the race's probe
hook, then writes race_stats.json (or race_failed.json) into OUTPUT_DIR; with
--sharpness-after, then the flatness probe of its final checkpoint (sharpness.json),
in the same process, so a run and its probe finish together.
Exit codes as tools/train_net.py: 0, 2 bad input, 3 diverged, 75 preempted.

Beside what it trains, a run records (race_stats.json): the iterations skipped for a
non-finite loss (the trainer's skips, counted by the probe hook over the whole run)
and the steps the optimizer itself skipped for non-finite gradients (ZENITH counts
them in its state: `skipped_steps()`; None for optimizers that do not), how the
BatchNorm statistics of the evaluated weights were obtained, and the machine.
"""
import os
import sys
import time
from typing import List

from .. import exit_codes
from ..engine import Trainer, hooks
from .probes import SYNC_START, SYNC_STEPS, num_params, optimizer_state_bytes, peak_memory, RaceProbe
from .runner import FAILED, SHARPNESS, STATS


def skipped_steps(trainer) -> dict:
    """{"nonfinite_loss": iterations the trainer skipped, "nonfinite_grad": steps the optimizer
    skipped (None where it does not count them)}."""
    counter = getattr(trainer.optimizer, "skipped_steps", None)
    grad = int(counter()) if callable(counter) else None
    return {"nonfinite_loss": int(trainer.probe.nonfinite_losses), "nonfinite_grad": grad}


def bn_at_eval(cfg, spec) -> dict:
    """How the BatchNorm statistics of the evaluated weights come about."""
    if cfg.TEST.PRECISE_BN.ENABLED:
        return {"recomputed": True, "batches": cfg.TEST.PRECISE_BN.NUM_ITER, "why": "TEST.PRECISE_BN"}
    if spec.bn_stats_at_eval_weights:
        return {"recomputed": True, "batches": cfg.TEST.PRECISE_BN.NUM_ITER,
                "why": f"{spec.name} evaluates weights it did not train at (its spec's bn_stats_at_eval_weights)"}
    return {"recomputed": False, "batches": 0, "why": "the running statistics of training"}


class RaceTrainer(Trainer):
    """The trainer with the race's probe, registered before the writer so what it logs at an
    iteration is written with it."""

    def build_hooks(self):
        built = super().build_hooks()
        self.probe = RaceProbe(self.cfg.LOG_PERIOD, SYNC_START, SYNC_STEPS)
        at = next((i for i, h in enumerate(built) if isinstance(h, hooks.PeriodicWriter)), len(built))
        return built[:at] + [self.probe] + built[at:]


def train_one(config: str, opts: List[str], resume: bool, sharpness_after=None) -> int:
    import torch

    from ..config import load_config
    from ..engine import default_setup
    from ..solver import lr_schedule_name
    from ..utils.fileio import atomic_write_json
    from .run_summary import machine_description

    torch.set_num_threads(int(os.environ.get("ZENITH_RACE_THREADS", torch.get_num_threads())))
    cfg = load_config(config, opts)
    default_setup(cfg, resume=resume)
    cfg.freeze()
    started = time.perf_counter()
    trainer = RaceTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    status, error = "ok", None
    try:
        trainer.train()
    except FloatingPointError as e:
        status, error = "diverged", str(e)
    if trainer.preempted:
        return exit_codes.PREEMPTED  # checkpointed; the next invocation resumes it
    times = trainer.storage.history("time").values() if trainer.storage is not None else []
    step_times = sorted(v for v, _ in times)
    mem, mem_kind = peak_memory()
    syncs = trainer.probe.sync_counter.counts if trainer.probe.sync_counter is not None else []
    stats = {
        "status": status,
        "error": error,
        "optimizer": cfg.SOLVER.OPTIMIZER,
        "optimizer_class": type(trainer.optimizer).__name__,
        "schedule": lr_schedule_name(cfg),
        "base_lr": cfg.SOLVER.BASE_LR,
        "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        "momentum": cfg.SOLVER.MOMENTUM,
        "window": cfg.SOLVER.ZENITH.WINDOW,
        "start": cfg.SOLVER.ZENITH.START,
        "seed": cfg.SEED,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "budget_hours": cfg.SOLVER.MAX_TIME_HOURS,
        "iterations": trainer.iter,
        "stop_reason": trainer.stop_reason or ("max_iter" if status == "ok" else status),
        "wall_seconds": trainer.clock.elapsed(),
        "process_seconds_this_session": time.perf_counter() - started,
        "step_seconds_median": step_times[len(step_times) // 2] if step_times else None,
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "state_bytes": optimizer_state_bytes(trainer.optimizer),
        "num_params": num_params(trainer.optimizer),
        "syncs_per_step": syncs,
        "sync_steps_from": trainer.probe.sync_start,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "code": code_version(),
        "machine": machine_description(),
        "log_period": cfg.LOG_PERIOD,
        "skipped_steps": skipped_steps(trainer),
        "bn_at_eval": bn_at_eval(cfg, trainer.optimizer_spec),
    }
    stats["state_bytes_per_param"] = stats["state_bytes"] / max(stats["num_params"], 1)
    atomic_write_json(stats, os.path.join(cfg.OUTPUT_DIR, STATS if status == "ok" else FAILED), indent=1)
    if status != "ok":
        return exit_codes.DIVERGED
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if sharpness_after is not None and os.path.exists(final):
        batches, iters, tol = sharpness_after
        sharpness_one(final, os.path.join(cfg.OUTPUT_DIR, SHARPNESS), batches, iters, tol)
    return exit_codes.OK


def code_version() -> str:
    """The commit of the zenith_det that ran (with "+changes" if its tree was modified), or "unknown"."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def sharpness_one(checkpoint: str, out: str, num_batches: int, iters: int, tol: float = 0.02) -> int:
    import torch

    from ..utils.fileio import atomic_write_json
    from .sharpness import checkpoint_sharpness

    torch.set_num_threads(int(os.environ.get("ZENITH_RACE_THREADS", torch.get_num_threads())))
    atomic_write_json(checkpoint_sharpness(checkpoint, num_batches, iters, tol), out, indent=1)
    return exit_codes.OK


def main(argv=None) -> int:
    from types import SimpleNamespace

    from ..utils.cli import run_guarded

    args = SimpleNamespace(debug=bool(os.environ.get("ZENITH_DEBUG")))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--sharpness"]:
        ckpt, out, batches, iters = argv[1:5]
        tol = float(argv[5]) if len(argv) > 5 else 0.02
        return run_guarded(lambda _: sharpness_one(ckpt, out, int(batches), int(iters), tol), args)
    config, rest = argv[0], argv[1:]
    resume = rest[:1] == ["--resume"]
    rest = rest[1:] if resume else rest
    sharpness_after = None
    if rest[:1] == ["--sharpness-after"]:
        sharpness_after = (int(rest[1]), int(rest[2]), float(rest[3]))
        rest = rest[4:]
    opts = rest[1:] if rest[:1] == ["--"] else rest
    return run_guarded(lambda _: train_one(config, opts, resume, sharpness_after), args)


if __name__ == "__main__":
    sys.exit(main())
