"""Start one process per device: under torchrun, under srun, or spawned here for `--num-gpus N`.

torchrun (one or many machines) sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; we
join that group. `srun --ntasks-per-node G python tools/train_net.py ...` starts
one process per task without torchrun: rank, world size and local rank are then
SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, the rendezvous is the first node
of the job step on a port derived from the job id (MASTER_ADDR and MASTER_PORT,
when set, win). Otherwise `--num-gpus N > 1` spawns N local processes. The
backend is NCCL when CUDA is used, gloo on the CPU.

Under srun and for spawned processes, the rendezvous waits in short steps (engine/rendezvous.py):
it says what it waits for, honours stop signals (exit 75) and gives up after `rendezvous_timeout_s`
(tools/train_net.py --rendezvous-timeout-s) with one line. torchrun's own agent has already
gathered its processes when ours start, so under torchrun the env:// group is joined directly.

An environment that contradicts itself (a SLURM_PROCID >= SLURM_NTASKS, torchrun's
and SLURM's ranks disagreeing, `--num-gpus` under srun) is a UserError: one line.
"""
import logging
import os
import signal
import socket
import sys
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import exit_codes
from ..errors import UserError
from .preemption import Preempted, preemption_signals
from .rendezvous import DEFAULT_WAIT_S, rendezvous
from .slurm import env_int, export_slurm_environment, slurm_task

logger = logging.getLogger(__name__)

# Signals sent to a `--num-gpus N` launcher alone that it passes on to its workers.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(use_cuda: bool) -> str:
    return "nccl" if use_cuda else "gloo"


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_launch_environment(num_processes: int = 1) -> Optional[str]:
    """Who started this process as one of several: "torchrun", "srun", or None (a single process,
    which spawns `num_processes` itself). Raises UserError, one line, where the environment
    contradicts itself or the request."""
    task = slurm_task()  # SLURM's own variables are checked whoever launched us
    if launched_by_torchrun():
        # torchrun itself (TORCHELASTIC_RUN_ID) numbers its processes its own way, one or many per srun
        # task. RANK/WORLD_SIZE/LOCAL_RANK set by anyone else (a wrapper, or left in the environment)
        # beside srun's variables must say what srun's do.
        if task is not None and "TORCHELASTIC_RUN_ID" not in os.environ:
            given = (env_int("RANK"), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK"))
            if given != tuple(task):
                raise UserError(
                    f"RANK={given[0]}, WORLD_SIZE={given[1]}, LOCAL_RANK={given[2]} disagree with srun's "
                    f"SLURM_PROCID={task.rank}, SLURM_NTASKS={task.world_size}, SLURM_LOCALID={task.local_rank}: "
                    "unset RANK/WORLD_SIZE/LOCAL_RANK (srun's are enough), or start torchrun under srun")
        return "torchrun"
    if task is not None:
        if num_processes > 1:
            raise UserError(f"--num-gpus {num_processes} under srun, which started SLURM_NTASKS={task.world_size} "
                            "processes already: give srun one task per GPU (srun --ntasks-per-node G) and drop "
                            "--num-gpus, or run a single task (srun --ntasks 1) with --num-gpus")
        return "srun"
    return None


def launch(main_func, num_processes: int = 1, use_cuda: bool = None, args=(), timeout_minutes: int = 30,
           rendezvous_timeout_s: float = DEFAULT_WAIT_S):
    """Run `main_func(*args)` in every process of the job. `timeout_minutes` bounds a collective
    once training runs; `rendezvous_timeout_s` bounds the wait for every process to join."""
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    launcher = check_launch_environment(num_processes)
    if launcher == "srun":
        task = slurm_task()
        export_slurm_environment(task)
        logger.info("srun task %d of %d (local rank %d); rendezvous at %s:%s", task.rank, task.world_size,
                    task.local_rank, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
    if launcher is not None:
        if not _joined(launcher, use_cuda, timeout_minutes, rendezvous_timeout_s):
            return exit_codes.PREEMPTED
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()
    if num_processes <= 1:
        return main_func(*args)
    if use_cuda and num_processes > torch.cuda.device_count():
        raise ValueError(f"--num-gpus {num_processes} but only {torch.cuda.device_count()} CUDA devices are visible")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    context = mp.start_processes(
        _worker, nprocs=num_processes,
        args=(main_func, num_processes, use_cuda, args, timeout_minutes, rendezvous_timeout_s),
        daemon=False, start_method="spawn", join=False,
    )
    # SIGTERM or SIGUSR2 sent to this process alone (`kill PID`, a scheduler) is passed to the
    # workers, which checkpoint and exit 75; join() then reports that code (ProcessExitedException).
    # Ctrl-C already reaches every process of the terminal's group: the parent just waits.
    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while not context.join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _joined(launcher, use_cuda: bool, timeout_minutes: int, rendezvous_timeout_s: float) -> bool:
    """Join the job's process group; False where a stop signal came first (one line says so)."""
    signals = preemption_signals().install()  # main() keeps it installed; the rendezvous polls it
    try:
        _init_from_env(use_cuda, timeout_minutes, rendezvous_timeout_s, wait_in_python=launcher != "torchrun")
    except Preempted as stop:
        logger.warning("%s received while waiting for the rendezvous: stopping before training (exit %d); "
                       "nothing was trained in this process", stop, exit_codes.PREEMPTED)
        signals.uninstall()
        return False
    return True


def _init_from_env(use_cuda: bool, timeout_minutes: int, rendezvous_timeout_s: float = DEFAULT_WAIT_S,
                   wait_in_python: bool = True) -> None:
    if use_cuda:
        local_rank, visible = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        # A scheduler that binds one GPU to each task (srun --gpus-per-task 1) shows each process its own only.
        torch.cuda.set_device(0 if visible == 1 else local_rank)
    timeout = timedelta(minutes=timeout_minutes)
    try:
        if wait_in_python:
            rendezvous(_backend(use_cuda), os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                       int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), rendezvous_timeout_s, timeout)
        else:
            dist.init_process_group(_backend(use_cuda), timeout=timeout)
    except dist.DistNetworkError as e:
        if "EADDRINUSE" not in str(e) and "address already in use" not in str(e).lower():
            raise
        raise UserError(f"MASTER_PORT {os.environ.get('MASTER_PORT')} on {os.environ.get('MASTER_ADDR')} is in use by "
                        "another process, so rank 0 cannot serve the rendezvous there; set MASTER_PORT to a free port "
                        "(or unset it under srun: the job id chooses one)") from None


def _worker(local_rank, main_func, world_size, use_cuda, args, timeout_minutes, rendezvous_timeout_s):
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    try:
        if not _joined("spawn", use_cuda, timeout_minutes, rendezvous_timeout_s):
            sys.exit(exit_codes.PREEMPTED)
    except UserError as e:  # the parent's own error handling does not reach a spawned process
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(exit_codes.USER_ERROR)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
