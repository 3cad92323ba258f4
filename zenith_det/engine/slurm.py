"""What srun tells a task about its place in the job, for a run started without torchrun.

`srun --ntasks-per-node G python tools/train_net.py ...` starts one process per task:
rank, world size and local rank are SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID; the
rendezvous is the first node of the job step, on a port derived from the job id
(MASTER_ADDR and MASTER_PORT, when set, win), as torchvision's references derive them.
Variables that contradict each other are a UserError: one line.
"""
import os
import re
import shutil
import subprocess
from typing import NamedTuple, Optional

from ..errors import UserError

class SlurmTask(NamedTuple):
    rank: int
    world_size: int
    local_rank: int


def env_int(name: str, minimum: int = 0) -> Optional[int]:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise UserError(f"{name}={value!r} is not a whole number >= {minimum}; "
                        "this environment was not set by srun or torchrun: unset it, or launch with srun")
    return number


def _tasks_on_this_node() -> Optional[int]:
    """The number of tasks srun started on this node, where SLURM says it: SLURM_STEP_TASKS_PER_NODE
    (or SLURM_TASKS_PER_NODE) is "2(x3),1" for 2 on each of the first 3 nodes and 1 on the 4th."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        text = os.environ.get(name)
        if text:
            break
    else:
        return None
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            return None  # a format we do not know: no check rather than a wrong one
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = os.environ.get("SLURM_NODEID")
    if node is not None and node.isdigit() and int(node) < len(counts):
        return counts[int(node)]
    return counts[0] if len(set(counts)) == 1 else None


def slurm_task() -> Optional[SlurmTask]:
    """This process's place in the job when srun started several tasks (SLURM_NTASKS > 1);
    None for a single task, and outside SLURM. Raises UserError where SLURM's variables
    contradict each other."""
    if "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return None
    world_size = env_int("SLURM_NTASKS", minimum=1)
    rank = env_int("SLURM_PROCID")
    if rank >= world_size:
        raise UserError(f"SLURM_PROCID={rank} but SLURM_NTASKS={world_size}: a rank must be below the number of tasks; "
                        "this environment was not set by srun (unset SLURM_PROCID, or launch with srun)")
    step_tasks = env_int("SLURM_STEP_NUM_TASKS", minimum=1)
    if step_tasks is not None and step_tasks != world_size:
        raise UserError(f"SLURM_NTASKS={world_size} but SLURM_STEP_NUM_TASKS={step_tasks}: the two task counts disagree; "
                        "launch the training with srun, one task per GPU")
    if world_size == 1:
        return None
    local_rank = env_int("SLURM_LOCALID")
    if local_rank is None:
        raise UserError(f"SLURM_PROCID and SLURM_NTASKS={world_size} are set but not SLURM_LOCALID: "
                        "this environment was not set by srun; launch with srun, one task per GPU")
    if local_rank > rank:
        raise UserError(f"SLURM_LOCALID={local_rank} is above SLURM_PROCID={rank}: a task's rank on its node "
                        "cannot exceed its rank in the job; this environment was not set by srun")
    on_node = _tasks_on_this_node()
    if on_node is not None and local_rank >= on_node:
        raise UserError(f"SLURM_LOCALID={local_rank} but this node runs {on_node} task(s) "
                        f"(SLURM_STEP_TASKS_PER_NODE/SLURM_TASKS_PER_NODE): the local rank must be below that")
    return SlurmTask(rank, world_size, local_rank)


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[003-005,9],cpu1" -> "gpu003"."""
    first = re.match(r"[^,\[]*(?:\[[^\]]*\][^,\[]*)*", nodelist.strip()).group(0)
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", first)


def _slurm_master_addr() -> str:
    nodelist = next((os.environ[n] for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                     if os.environ.get(n)), None)
    if nodelist:
        if shutil.which("scontrol"):  # SLURM's own expansion, when it is at hand
            try:
                out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                     timeout=60, check=True).stdout.split()
                if out:
                    return out[0]
            except (OSError, subprocess.SubprocessError):
                pass
        host = first_node(nodelist)
        if host:
            return host
    if os.environ.get("SLURM_LAUNCH_NODE_IPADDR"):
        return os.environ["SLURM_LAUNCH_NODE_IPADDR"]
    raise UserError("srun started several tasks but SLURM_JOB_NODELIST is not set: set MASTER_ADDR to the host of "
                    "rank 0 (SLURM_PROCID 0)")


# MASTER_PORT under srun: a port of the job id, so that every task finds the same one, below
# Linux's ephemeral ports (32768 on), so that no outgoing connection holds it.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 15000


def slurm_master_port(job_id: str) -> int:
    digits = re.sub(r"\D", "", job_id)
    if not digits:
        raise UserError(f"SLURM_JOB_ID={job_id!r} has no digits to derive MASTER_PORT from: set MASTER_PORT")
    return SLURM_PORT_BASE + int(digits) % SLURM_PORT_SPAN


def export_slurm_environment(task: SlurmTask) -> None:
    """torch.distributed's env:// variables from SLURM's, as torchrun would have set them."""
    if not os.environ.get("MASTER_ADDR"):
        os.environ["MASTER_ADDR"] = _slurm_master_addr()
    if not os.environ.get("MASTER_PORT"):
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID")
        if not job_id:
            raise UserError("srun started several tasks but SLURM_JOB_ID is not set: set MASTER_PORT")
        os.environ["MASTER_PORT"] = str(slurm_master_port(job_id))
    os.environ.update(RANK=str(task.rank), WORLD_SIZE=str(task.world_size), LOCAL_RANK=str(task.local_rank))
