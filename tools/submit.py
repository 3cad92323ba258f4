#!/usr/bin/env python
"""Submit a training job to SLURM through submitit: one task per GPU, each running
tools/train_net.py's own code; at a time limit or a preemption the job writes a
checkpoint, is requeued and resumes by itself (docs/cluster.md).

    python tools/submit.py --config configs/mask_rcnn_zenith.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --timeout-min 240
    python tools/submit.py --config configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml --cluster local \\
        --gpus-per-node 2 --wait MODEL.DEVICE cpu          # here: 2 processes, gloo

It prints the job id, OUTPUT_DIR and where each rank's log is (OUTPUT_DIR/submitit/JOB_ID/).
With --wait it waits for the job and exits with its status: 0 done, 2 bad input,
3 diverged, 75 stopped with a checkpoint and not requeued, 1 failed.

A bad config, bad overrides or an OUTPUT_DIR holding an earlier run (without
--resume) are refused in one line, exit 2, before anything is submitted.
Needs submitit: pip install -e ".[slurm]".
"""
import argparse
import contextlib
import io
import math
import os
import shutil
import sys

from zenith_det.errors import UserError
from zenith_det.utils.cli import OneLineArgumentParser, positive_seconds, run_guarded

def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "--config-file", dest="config_file", required=True, metavar="FILE", help="YAML config")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1,
                   help="GPUs, and so training processes, per machine (default 1); "
                        "with --cluster local on a CPU machine: processes, with gloo")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--timeout-min", type=int,
                   help="time limit of one job segment, in minutes; the job is requeued past it "
                        "(default: SOLVER.MAX_TIME_HOURS + 30 min, or 3 days without a budget)")
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="slurm (default), or local: the same job in processes on this machine")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its status")
    p.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR (a new job otherwise "
                   "refuses a folder that holds one)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="requeues after a failure that is neither a time limit nor a preemption (default 2)")
    p.add_argument("--max-timeouts", type=int, default=20,
                   help="requeues after reaching the time limit (submitit's max_num_timeout; default 20)")
    p.add_argument("--signal-delay-s", type=int, default=120,
                   help="seconds between SLURM's SIGUSR2 and the time limit: time to finish the iteration "
                        "and write a checkpoint (default 120)")
    p.add_argument("--rendezvous-timeout-s", type=positive_seconds,
                   help="how long the tasks wait for each other to start before the job fails with one line "
                        "(tools/train_net.py's flag; default 600)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per process (default DATALOADER.NUM_WORKERS + 1)")
    p.add_argument("--job-name", help="default: zenith_<config name>")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm account=abc --slurm mem=0 (repeatable)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. SOLVER.BASE_LR 0.01")
    args = p.parse_args(argv)
    for flag in ("nodes", "gpus_per_node", "max_retries", "max_timeouts", "signal_delay_s", "timeout_min",
                 "cpus_per_task"):
        value, minimum = getattr(args, flag), 0 if flag in ("max_retries", "max_timeouts") else 1
        if value is not None and value < minimum:
            p.error(f"--{flag.replace('_', '-')} {value}: must be at least {minimum}")
    if args.cluster == "local" and args.nodes != 1:
        p.error(f"--cluster local runs on this machine only: --nodes {args.nodes} needs --cluster slurm")
    for item in args.slurm:
        if "=" not in item or not item.split("=", 1)[0]:
            p.error(f"--slurm {item}: expected KEY=VALUE, e.g. --slurm account=abc")
    return args


def main(argv=None) -> int:
    return run_guarded(_submit, parse_args(argv))


def _check(args):
    """Everything that can be refused here, before a folder is created or a job submitted:
    returns the config and the absolute OUTPUT_DIR."""
    from zenith_det.config import load_config
    from zenith_det.engine.setup import earlier_run_file

    cfg = load_config(args.config_file, args.opts)
    processes = args.nodes * args.gpus_per_node
    if cfg.SOLVER.IMS_PER_BATCH % processes:
        raise UserError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} must be a multiple of the {processes} "
                        f"processes (--nodes {args.nodes} x --gpus-per-node {args.gpus_per_node})")
    if args.cluster == "local":
        import torch

        from zenith_det.engine import resolve_device

        if resolve_device(cfg).type == "cuda" and args.gpus_per_node > torch.cuda.device_count():
            raise UserError(f"--gpus-per-node {args.gpus_per_node} but this machine has "
                            f"{torch.cuda.device_count()} CUDA devices; on a CPU set MODEL.DEVICE cpu")
    else:
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise UserError(f"--cluster slurm needs SLURM's {' and '.join(missing)} on this machine's PATH; "
                            "submit from a SLURM login node, or use --cluster local to run here")
    out = os.path.abspath(cfg.OUTPUT_DIR)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"OUTPUT_DIR {out} is a file, not a folder; set OUTPUT_DIR to a folder for the run")
    earlier = earlier_run_file(out) if os.path.isdir(out) else None
    if earlier and not args.resume:
        raise UserError(f"OUTPUT_DIR {out} holds an earlier run ({earlier}); add --resume to continue it, "
                        "or set OUTPUT_DIR to a new folder")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError('tools/submit.py needs submitit: pip install -e ".[slurm]"') from None
    return cfg, out


def _submit(args) -> int:
    cfg, out = _check(args)
    import submitit

    from zenith_det.cluster import TrainingJob

    budget_min = cfg.SOLVER.MAX_TIME_HOURS * 60
    timeout_min = args.timeout_min or (math.ceil(budget_min) + 30 if budget_min > 0 else 3 * 24 * 60)
    folder = os.path.join(out, "submitit", "%j")
    common = dict(timeout_min=timeout_min, tasks_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay_s)
    if args.cluster == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_timeouts)
        gpus = args.gpus_per_node if _uses_cuda(cfg) else 0
        executor.update_parameters(gpus_per_node=gpus, **common)
    else:
        executor = submitit.SlurmExecutor(folder, max_num_timeout=args.max_timeouts)
        extra = dict(item.split("=", 1) for item in args.slurm)
        # One task per GPU; a model on the CPU asks for no GPU (a cluster without GPU GRES refuses the request).
        gpus = {} if cfg.MODEL.DEVICE == "cpu" else {"gpus_per_node": args.gpus_per_node}
        executor.update_parameters(
            job_name=args.job_name or "zenith_" + os.path.splitext(os.path.basename(args.config_file))[0],
            nodes=args.nodes, ntasks_per_node=args.gpus_per_node, **gpus,
            cpus_per_task=args.cpus_per_task or cfg.DATALOADER.NUM_WORKERS + 1, time=timeout_min,
            signal_delay_s=args.signal_delay_s, **({"partition": args.partition} if args.partition else {}),
            **({"additional_parameters": extra} if extra else {}),
        )
    # The user's OUTPUT_DIR override is replaced by its absolute path, not repeated after it.
    opts = [v for i in range(0, len(args.opts), 2) if args.opts[i] != "OUTPUT_DIR" for v in args.opts[i:i + 2]]
    wait = ["--rendezvous-timeout-s", f"{args.rendezvous_timeout_s:g}"] if args.rendezvous_timeout_s else []
    argv = ["--config", os.path.abspath(args.config_file), *wait, *opts, "OUTPUT_DIR", out]
    # submitit copies sbatch's stderr to ours: kept instead, so a refusal is one line with sbatch's reason.
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            job = executor.submit(TrainingJob(argv, max_retries=args.max_retries))
    except submitit.core.utils.FailedJobError as e:
        raise UserError(f"the cluster refused the job: {_refusal(str(e))}; nothing was submitted") from None
    sys.stderr.write(said.getvalue())  # what sbatch said of a job it took
    job_dir = str(job.paths.folder)
    ranks = args.nodes * args.gpus_per_node
    print(f"Submitted job {job.job_id} ({args.cluster}: {args.nodes} node(s) x {args.gpus_per_node} process(es), "
          f"{timeout_min} min per segment)")
    print(f"  OUTPUT_DIR:  {out}")
    print(f"  logs:        {job_dir}/{job.job_id}_<rank>_log.out and .err, rank 0 to {ranks - 1}")
    print(f"  run log:     {os.path.join(out, 'log.txt')} (TensorBoard: tensorboard --logdir {out})")
    sys.stdout.flush()
    if not args.wait:
        return 0
    return _wait(job, job_dir, args.cluster)


def _refusal(text: str) -> str:
    """sbatch's own reason ("Batch job submission failed: Invalid partition name specified"), not submitit's trace."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = list(dict.fromkeys(line.split("error:", 1)[1].strip() for line in lines if "error:" in line))
    return "; ".join(said) if said else (lines[-1] if lines else "no reason given")


def _wait_for_slurm_job(job, poll_s: float = 2.0) -> str:
    """Wait until the job has left SLURM's queue for good (requeues waited through); its last state.
    submitit's own wait asks sacct, which a cluster without accounting never answers: it waited forever."""
    import time

    from zenith_det.cluster import SLURM_FINAL_STATES, slurm_job_state

    while True:
        state = slurm_job_state(job.job_id)
        if state is None or state in SLURM_FINAL_STATES:
            return state or "gone from the queue"
        time.sleep(poll_s)


def _uses_cuda(cfg) -> bool:
    from zenith_det.engine import resolve_device

    return resolve_device(cfg).type == "cuda"


def _wait(job, job_dir: str, cluster: str) -> int:
    from zenith_det.cluster import FAILED, read_status

    try:
        state = _wait_for_slurm_job(job) if cluster == "slurm" else (job.wait(), job.state)[1]
    except KeyboardInterrupt:
        print(f"Stopped waiting; job {job.job_id} goes on", file=sys.stderr)
        return 130
    status = read_status(job_dir)
    if status is None:
        print(f"error: job {job.job_id} ended without finishing (state {state}): cancelled or killed; "
              f"see the logs in {job_dir}", file=sys.stderr)
        return FAILED
    code = int(status["exit_code"])
    print(f"Job {job.job_id}: {status['message']} (exit {code})", file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
