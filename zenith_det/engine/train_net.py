"""The training job from the command line: what tools/train_net.py runs, and each task of
tools/submit.py's jobs (zenith_det/cluster.py).

    cli(["--config", "configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml", "SOLVER.MAX_ITER", "10"])

Exit codes: 0 done, 2 bad input (one line says what to fix), 3 diverged, 75 preempted
(SIGTERM, SIGINT or SIGUSR2: a checkpoint was written, continue with --resume).
"""
import logging
import os
import sys

import torch.multiprocessing as mp

from ..config import load_config
from ..evaluation import RESULTS_FILE, format_results_table
from ..utils import comm
from ..utils.cli import default_argument_parser, run_guarded
from .defaults import Trainer, build_model_for_evaluation, evaluate, inference_dir, resolve_device
from .launch import check_launch_environment, launch
from .preemption import PREEMPTED_EXIT_CODE, Preempted, preemption_signals
from .run_lock import check_run_folder
from .setup import default_setup

logger = logging.getLogger("zenith_det")


def main(args) -> int:
    # First of all: a stop signal at any later moment ends with a resumable state and exit 75.
    signals = preemption_signals().install()
    try:
        return _main(args)
    finally:
        signals.uninstall()  # for callers in the same process (tests); the process is about to end


def _main(args) -> int:
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, resume=args.resume or args.eval_only)
    cfg.freeze()
    if args.eval_only:
        return eval_only(cfg, args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    check_run_folder(cfg.OUTPUT_DIR, "at the end of training")  # during the final evaluation: no summary of files gone
    if comm.is_main_process():
        print_summary(trainer.cfg, results, trainer)
    if trainer.preempted:  # a signal at any point, the last checkpoint included
        logger.warning("Preempted after iteration %d; continue with --resume (exit code %d)", trainer.iter, PREEMPTED_EXIT_CODE)
        return PREEMPTED_EXIT_CODE
    return 0


def eval_only(cfg, resume: bool) -> int:
    model, metadata = build_model_for_evaluation(cfg, resume)
    try:
        with preemption_signals().interruptible():
            results = evaluate(cfg, model, metadata)
    except Preempted:
        logger.warning("Evaluation abandoned: the run was asked to stop (exit code %d)", PREEMPTED_EXIT_CODE)
        return PREEMPTED_EXIT_CODE
    if comm.is_main_process():
        print_summary(cfg, results, None)
    return 0


def print_summary(cfg, results, trainer) -> None:
    out = cfg.OUTPUT_DIR
    if results:
        table = format_results_table(results)
    elif not cfg.DATASETS.TEST:
        table = "  (no evaluation: DATASETS.TEST is empty)"
    else:  # stopped during (or before) the final evaluation: --resume runs it
        table = "  (no evaluation: the run stopped before its final evaluation finished; --resume evaluates)"
    lines = ["", "Evaluation (COCO AP, %):", table]
    if trainer is not None:
        lines.append(
            f"Stopped after {trainer.iter} iterations ({trainer.stop_reason or 'SOLVER.MAX_ITER reached'}), "
            f"{trainer.clock.elapsed() / 60:.1f} min of the {cfg.SOLVER.MAX_TIME_HOURS:g} h budget used."
        )
        lines.append(f"  checkpoint:  {trainer.last_good_checkpoint}")
    for name in cfg.DATASETS.TEST:
        written = os.path.join(inference_dir(cfg, name), RESULTS_FILE)
        if results and os.path.exists(written):  # only what this run's evaluation wrote
            lines.append(f"  results:     {written}")
    lines.append(f"  metrics:     {os.path.join(out, 'metrics.json')} (TensorBoard: tensorboard --logdir {out})")
    lines.append(f"  config:      {os.path.join(out, 'config.yaml')}")
    print("\n".join(lines), flush=True)


def cli(argv=None, description: str = __doc__) -> int:
    args = default_argument_parser(description).parse_args(argv)
    if args.list_optimizers:
        from zenith_det.solver import list_optimizers

        print("\n".join(f"{name:22s}{description}" for name, description in list_optimizers(with_description=True)))
        return 0
    return run_guarded(_launch, args)


def _launch(args) -> int:
    # Checked once here, so a bad config fails before any process is spawned.
    cfg = load_config(args.config_file, args.opts)
    use_cuda = resolve_device(cfg).type == "cuda"
    # Started by torchrun or srun (one process per device already), or a single process here.
    if check_launch_environment(args.num_gpus) is not None or args.num_gpus <= 1:
        return launch(main, 1, use_cuda=use_cuda, args=(args,), rendezvous_timeout_s=args.rendezvous_timeout_s)
    try:
        launch(_spawned_main, args.num_gpus, use_cuda=use_cuda, args=(args,),
               rendezvous_timeout_s=args.rendezvous_timeout_s)
    except mp.ProcessExitedException as e:
        return e.exit_code
    return 0


def _spawned_main(args):
    code = run_guarded(main, args)
    if code:
        sys.exit(code)
