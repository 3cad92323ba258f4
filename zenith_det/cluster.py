"""tools/train_net.py as a submitit job: one task per GPU, requeued at a time limit or a preemption.

`tools/submit.py` submits a `TrainingJob`. submitit pickles it, starts one task per
GPU (SLURM: `srun` inside an sbatch script; `--cluster local`: subprocesses here)
and calls it in each. A task runs the training job's `cli()` (zenith_det/engine/train_net.py,
what tools/train_net.py runs) with the command line it was given, which always ends in `--resume`: the first segment
finds no checkpoint and starts from scratch, every later one continues from the
newest.

The signals (docs/cluster.md):

- SIGUSR2, submitit's "time limit near / preempted" signal (SLURM sends it
  `signal_delay_s` before the limit, to every task). submitit's own handler would
  requeue at once, losing the iterations since the last checkpoint; the trainer's
  handler takes it over while training runs (PreemptionSignals), so the iteration
  finishes, a checkpoint is written and train_net returns 75. Then rank 0 hands
  the signal back to submitit's handler, which calls `checkpoint()` (this job,
  unchanged), counts the timeouts (`max_num_timeout`) and requeues the job.
- SIGTERM (a preemption without `send_user_signal`, `scancel`): the trainer
  checkpoints and the tasks exit 75 without requeueing; SLURM requeues a
  preempted job itself when its PreemptMode says so, and the requeued job resumes.
- A segment that ends where it began (resumed at iteration N, stopped at N: the time limit
  minus the signal delay is shorter than start-up plus a step) is not requeued: it would
  burn the queue without progress. Rank 0 says so in one line and the job ends with exit 2.
- Any other failure (an exception) is requeued by rank 0 at most `max_retries`
  times per job, counted in the job's folder (FAILURES_FILE) with its cause. A bad
  input (exit 2) or a divergence (exit 3) would fail again: never requeued.

Rank 0 writes the job's outcome to STATUS_FILE in the job's folder when it ends
for good; `tools/submit.py --wait` reads it.

Only the standard library at module level: the task imports this module to unpickle the job.
"""
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
import traceback
from typing import Optional, Sequence

from .exit_codes import DIVERGED, OK, PREEMPTED, USER_ERROR

logger = logging.getLogger(__name__)

STATUS_FILE = "zenith_status.json"
# Each rank but 0 writes how its segment ended here, so that rank 0, failing because a peer left,
# knows why: bad input or a divergence on that rank ends the job (a retry would fail again), a rank
# that wrote nothing was killed. Rank 0 waits up to PEER_WAIT_S for them.
RANK_OUTCOME_FILE = "zenith_rank{}.json"
PEER_WAIT_S = 20.0
# The exit codes of a training that would end the same way again: never requeued.
WOULD_FAIL_AGAIN = (USER_ERROR, DIVERGED)
FAILURES_FILE = "zenith_failures.json"
# The exit status of a job that failed for good (an exception, retries spent).
FAILED = 1


class JobFailed(Exception):
    """The job's training ended with `exit_code` and is not requeued."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(f"exit code {exit_code}: {message}")
        self.exit_code = exit_code


class TrainingJob:
    """A submitit callable with submitit's checkpointing protocol (`__call__` and `checkpoint`)."""

    def __init__(self, argv: Sequence[str], max_retries: int = 2, entry: str = "zenith_det.engine.train_net:cli"):
        self.entry = entry  # "module:function" every task calls with argv (tests give a stand-in)
        self.argv = list(argv)
        self.command = list(argv)  # what the user submitted: the run's log records it, not our --resume
        if "--resume" not in self.argv:
            self.argv.append("--resume")
        self.max_retries = max_retries

    def checkpoint(self, *args, **kwargs):
        """Called by submitit's signal handler before a requeue: the same job, which resumes (its
        argv ends in --resume). The trainer has written its checkpoint by then (see __call__)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)

    def __call__(self) -> int:
        import submitit
        from submitit.core.utils import UncompletedJobError

        from .utils.early_signals import record_stop_signals

        requeue_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        submitit_handler = signal.getsignal(requeue_signal)
        # First: a signal while torch loads or the ranks meet is kept for the trainer's handler. submitit's
        # own ignores it on ranks other than 0, which then waited for a rank 0 that had requeued and left.
        record_stop_signals(extra=(requeue_signal,))
        env = submitit.JobEnvironment()
        export_torch_distributed_environment(env)
        job_dir = str(env.paths.folder)
        rank = env.global_rank
        if rank == 0:
            _remove(os.path.join(job_dir, STATUS_FILE))  # an earlier segment's, before a requeue by SLURM itself
        _remove(_outcome_path(job_dir, rank))
        segment_started = time.time()
        from .engine.preemption import preemption_signals

        signals = preemption_signals()
        signals.add_signal(requeue_signal)  # the trainer stops at a safe point on it, as on SIGTERM
        # The run log's "Command line": what the user submitted, without the --resume every segment adds.
        sys.argv = ["tools/train_net.py", *getattr(self, "command", self.argv)]
        started_at = resume_point(self.argv)
        module, _, function = self.entry.partition(":")
        try:
            code = getattr(importlib.import_module(module), function)(self.argv)
        except Exception as e:  # noqa: BLE001 (a crash of any kind: requeued a bounded number of times)
            return self._failed(env, job_dir, e, segment_started)
        if rank != 0:
            from .utils.cli import last_error

            _write_json(_outcome_path(job_dir, rank),
                        {"exit_code": code, "message": last_error() if code in WOULD_FAIL_AGAIN else ""})
        if code == OK:
            if rank == 0:
                _write_status(job_dir, OK, "done")
            return OK
        if code == PREEMPTED and requeue_signal.name in signals.seen:
            if rank != 0:
                _say(f"rank {rank}: stopped for {requeue_signal.name} with the checkpoint written; "
                     "rank 0 requeues the job")
                sys.exit(0)
            ended_at = resume_point(self.argv)
            if started_at is not None and ended_at is not None and ended_at <= started_at:
                # Requeued, it would resume here and be stopped here again, until the timeouts are spent.
                message = (f"the segment made no progress: it resumed at iteration {started_at} and "
                           f"{requeue_signal.name} stopped it there; the time limit minus --signal-delay-s is "
                           "shorter than start-up plus one iteration: raise --timeout-min or lower "
                           "--signal-delay-s, then resubmit with --resume")
                _say(f"error: {message}")
                _write_status(job_dir, USER_ERROR, message)
                sys.exit(USER_ERROR)
            if not callable(submitit_handler):  # not started by submitit: nothing to hand the signal to
                _write_status(job_dir, PREEMPTED, f"stopped by {requeue_signal.name}; continue with --resume")
                sys.exit(PREEMPTED)
            _say(f"{requeue_signal.name}: checkpoint written; requeueing the job through submitit")
            try:
                submitit_handler(requeue_signal, None)  # checkpoint() + requeue + exit, as submitit does
            except UncompletedJobError as e:  # "timed-out too many times"
                _write_status(job_dir, PREEMPTED, f"{e}; the checkpoint is written: resubmit with --resume")
                raise
            return PREEMPTED  # not reached: submitit's handler exits the task after requeueing
        if code == PREEMPTED:
            # SIGTERM or SIGINT: a preemption that SLURM requeues itself (or not), a scancel, a Ctrl-C.
            # No result is written, so that a job requeued by SLURM is still waited for.
            if rank == 0:
                _write_status(job_dir, PREEMPTED, f"stopped by {signals.received} with a checkpoint written; "
                              "not requeued by us: resubmit with --resume if SLURM does not requeue it")
            sys.exit(PREEMPTED)
        reason = {USER_ERROR: "bad input (the line starting with 'error:' in the task's log says what to fix)",
                  DIVERGED: "training diverged (SOLVER.MAX_NONFINITE_STEPS non-finite losses, or steps skipped for "
                            "non-finite gradients, in a row)"}
        message = reason.get(code, "tools/train_net.py failed") + "; not requeued: it would fail again"
        if rank == 0:
            _write_status(job_dir, code, message)
        raise JobFailed(code, message)

    def _failed(self, env, job_dir: str, error: Exception, segment_started: float) -> int:
        cause = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        if env.global_rank != 0:
            _write_json(_outcome_path(job_dir, env.global_rank), {"exit_code": FAILED, "message": cause})
            _say(f"rank {env.global_rank} failed ({cause}); rank 0 decides whether the job is requeued")
            raise error
        peers, missing = _peer_outcomes(env.num_tasks, job_dir, segment_started)
        for peer, outcome in sorted(peers.items()):
            if outcome["exit_code"] in WOULD_FAIL_AGAIN:  # the cause of rank 0's failure
                message = (f"rank {peer}: {outcome['message'] or 'exit code ' + str(outcome['exit_code'])}; "
                           "not requeued: it would fail again")
                _say(f"error: {message}")
                _write_status(job_dir, outcome["exit_code"], message)
                raise JobFailed(outcome["exit_code"], message) from None
        if missing:
            cause = (f"rank(s) {', '.join(map(str, missing))} ended without a word (killed: SIGKILL, out of memory, "
                     f"a lost node), then rank 0 failed: {cause}")[:500]
        path = os.path.join(job_dir, FAILURES_FILE)
        failures = _read_json(path, default=[])
        failures.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "cause": cause})
        _write_json(path, failures)
        retries = "retry" if self.max_retries == 1 else "retries"
        if len(failures) <= self.max_retries:
            traceback.print_exception(error)  # what the last line below names, in full
            _say(f"error: the job failed ({cause}); requeueing it, retry {len(failures)} of {self.max_retries} "
                 f"(causes in {path})")
            env._requeue(_timeouts_left(env))  # submitit's requeue: scontrol requeue on SLURM, exit 144 locally
            sys.exit(-1)  # as submitit's own handler does once SLURM has the job back
        _say(f"error: the job failed ({cause}) after {self.max_retries} {retries}; not requeued again "
             f"(causes in {path})")
        _write_status(job_dir, FAILED, f"failed {len(failures)} times, last: {cause}")
        raise error


def _outcome_path(job_dir: str, rank: int) -> str:
    return os.path.join(job_dir, RANK_OUTCOME_FILE.format(rank))


def _peer_outcomes(num_tasks: int, job_dir: str, segment_started: float):
    """The outcomes the other ranks wrote in this segment ({rank: outcome}), and the ranks that wrote
    none within PEER_WAIT_S. Only rank 0 asks, after it failed."""
    deadline = time.monotonic() + PEER_WAIT_S
    while True:
        peers = {}
        for peer in range(1, num_tasks):
            path = _outcome_path(job_dir, peer)
            try:
                fresh = os.path.getmtime(path) >= segment_started - 1.0  # not an earlier segment's
            except OSError:
                fresh = False
            outcome = _read_json(path, default=None) if fresh else None
            if isinstance(outcome, dict) and isinstance(outcome.get("exit_code"), int):
                peers[peer] = outcome
        missing = [peer for peer in range(1, num_tasks) if peer not in peers]
        decided = any(o["exit_code"] in WOULD_FAIL_AGAIN for o in peers.values())
        if not missing or decided or time.monotonic() >= deadline:
            return peers, missing
        time.sleep(0.2)


def resume_point(argv: Sequence[str]) -> Optional[int]:
    """The iteration the run of `argv` would resume from: its OUTPUT_DIR's tagged checkpoint
    (model_NNNNNNN.pth), 0 where there is none yet; None where argv names no OUTPUT_DIR or the
    tag is another file (model_final.pth: the run is over)."""
    values = [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "OUTPUT_DIR"]
    if not values:
        return None
    try:
        with open(os.path.join(values[-1], "last_checkpoint"), encoding="utf-8") as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return 0
    found = re.fullmatch(r"model_(\d{7})\.pth", name)
    return int(found.group(1)) if found else None


def _timeouts_left(env) -> int:
    """The requeues after a time limit that submitit still allows this job (for its log line)."""
    from submitit.helpers import DelayedSubmission

    try:
        return DelayedSubmission.load(env.paths.submitted_pickle)._timeout_countdown
    except Exception:  # noqa: BLE001 (only a number for a log line)
        return 0


def export_torch_distributed_environment(env) -> None:
    """torch.distributed's env:// variables for this task, from submitit's job environment: what
    torchrun would set. On SLURM they agree with srun's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID."""
    from .engine.slurm import slurm_master_port

    os.environ.update(
        RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.num_tasks // max(env.num_nodes, 1)),
        MASTER_ADDR="127.0.0.1" if env.num_nodes == 1 else env.hostnames[0],
        MASTER_PORT=str(slurm_master_port(str(env.job_id))),
    )


# squeue's states of a job that will not run again (a requeued one is PENDING, REQUEUED or REQUEUE_*).
SLURM_FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                      "BOOT_FAIL", "DEADLINE", "REVOKED"}


def slurm_job_state(job_id: str) -> Optional[str]:
    """The job's state from squeue (which needs no accounting database, unlike sacct, which
    submitit asks), e.g. "RUNNING"; None once slurmctld has forgotten the job (MinJobAge)."""
    import subprocess

    try:
        result = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"  # squeue itself failed: not a reason to stop waiting
    if result.returncode != 0:
        return None if "Invalid job id" in result.stderr else "UNKNOWN"
    states = result.stdout.split()
    return states[0] if states else None


def read_status(job_dir: str) -> Optional[dict]:
    """The outcome rank 0 wrote when the job ended for good: {"exit_code": N, "message": ...}, or None."""
    return _read_json(os.path.join(job_dir, STATUS_FILE), default=None)


def _say(message: str) -> None:
    """To the run's log (log.txt and the console) once train_net set it up, else to stderr."""
    if logging.getLogger("zenith_det").handlers:
        logger.warning("%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


def _read_json(path: str, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write_json(path: str, obj) -> None:
    from .utils.fileio import atomic_write_json

    atomic_write_json(obj, path, indent=1)


def _write_status(job_dir: str, exit_code: int, message: str) -> None:
    _write_json(os.path.join(job_dir, STATUS_FILE), {"exit_code": exit_code, "message": message})


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
