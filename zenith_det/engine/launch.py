"""Start one process per device: under torchrun, or spawned here for `--num-gpus N`.

torchrun (one or many machines) sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; we
join that group. Otherwise `--num-gpus N > 1` spawns N local processes. The
backend is NCCL when CUDA is used, gloo on the CPU.
"""
import logging
import os
import signal
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(use_cuda: bool) -> str:
    return "nccl" if use_cuda else "gloo"


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(main_func, num_processes: int = 1, use_cuda: bool = None, args=(), timeout_minutes: int = 30):
    """Run `main_func(*args)` in every process of the job."""
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if launched_by_torchrun():
        _init_from_env(use_cuda, timeout_minutes)
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
        _worker, nprocs=num_processes, args=(main_func, num_processes, use_cuda, args, timeout_minutes),
        daemon=False, start_method="spawn", join=False,
    )
    # SIGTERM sent to this process alone (`kill PID`, a scheduler) is passed to the workers,
    # which checkpoint and exit 75; join() then reports that code (ProcessExitedException).
    # Ctrl-C already reaches every process of the terminal's group: the parent just waits.
    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        while not context.join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _init_from_env(use_cuda: bool, timeout_minutes: int) -> None:
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(_backend(use_cuda), timeout=timedelta(minutes=timeout_minutes))


def _worker(local_rank, main_func, world_size, use_cuda, args, timeout_minutes):
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    _init_from_env(use_cuda, timeout_minutes)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
