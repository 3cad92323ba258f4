"""tools/submit.py against a real SLURM: the one-node cluster .ci/start_slurm.sh starts (slurmctld,
slurmd, munge; two fake GPU devices so GPU requests schedule). Real sbatch, srun, time limits,
SIGUSR2 before them, requeues, scancel and a killed task.

Skipped where no cluster answers (`sinfo`); .ci/run starts one when it runs as root with apt."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FAST_CLI, REPO, SYNTHETIC_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SUBMIT = os.path.join(REPO, "tools", "submit.py")


def _cluster_up() -> bool:
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return False
    return any(state in ("idle", "mixed", "allocated") for state in states)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    pytest.importorskip("submitit")
    if not _cluster_up():
        pytest.skip("no SLURM cluster answers sinfo here (.ci/start_slurm.sh starts one, as root)")


def _env(datasets_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(ZENITH_DATASETS=datasets_root, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return env


def _submit(datasets_root, out, *flags, opts=(), wait=True, cwd=None):
    args = [sys.executable, SUBMIT, "--cluster", "slurm", *flags, *(["--wait"] if wait else []),
            "--config", SYNTHETIC_CONFIG, *FAST_CLI, *opts, "OUTPUT_DIR", str(out)]
    return subprocess.Popen(args, env=_env(datasets_root), cwd=cwd or str(out.parent), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _job_id(stdout_line: str) -> str:
    assert stdout_line.startswith("Submitted job "), stdout_line
    return stdout_line.split()[2]


def _logs(out) -> str:
    return "".join(open(f, errors="replace").read() for f in sorted(glob.glob(str(out / "submitit" / "*" / "*.out"))))


def _iterations_done(out) -> int:
    try:
        lines = open(out / "metrics.json").read().splitlines()
    except OSError:
        return 0
    done = [json.loads(line).get("iteration", -1) for line in lines if line.strip().startswith("{")]
    return max(done, default=-1) + 1


def _wait_for(condition, what, proc=None, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: submit.py ended first: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_short_segments_are_signalled_checkpointed_and_requeued_until_the_budget_ends(tmp_path, datasets_root):
    """2 tasks (gloo), 1-minute segments with SIGUSR2 before each limit (SLURM sends it at its
    30-second checks, so 30 to 60 s in). A budget of 60 s of training needs two segments at
    least (a segment trains under 60 s less start-up); the job is requeued as one and ends with model_final.pth, the budget counted across
    segments, not the queue's time between them."""
    out = tmp_path / "run"
    proc = _submit(datasets_root, out, "--gpus-per-node", "2", "--timeout-min", "1", "--signal-delay-s", "1",
                   opts=["SOLVER.MAX_ITER", "100000", "SOLVER.MAX_TIME_HOURS", str(60 / 3600),
                         "SOLVER.CHECKPOINT_PERIOD", "100000"])
    stdout, stderr = proc.communicate(timeout=600)
    logs = _logs(out)
    assert proc.returncode == 0, stderr[-3000:] + logs[-3000:]
    assert "Requeued job" in logs and "SIGUSR2 received: stopping at the next safe point" in logs
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert open(out / "last_checkpoint").read().strip() == "model_final.pth"
    spent = final["budget"]["spent_seconds"]
    assert 50 <= spent <= 60 + 5, spent  # the budget, spent over the segments (the last step may overrun a little)
    resumed = [line for line in logs.splitlines() if "Resumed from" in line]
    assert resumed  # rank 0 says so in each later segment
    assert "h budget used" in logs


def test_an_sbatch_refusal_is_one_line_and_exit_2(tmp_path, datasets_root):
    out = tmp_path / "run"
    proc = _submit(datasets_root, out, "--partition", "nosuchpartition")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the cluster refused the job: "), stderr
    assert "partition" in lines[0].lower() and "Traceback" not in stderr


def test_scancel_mid_run_leaves_a_resumable_checkpoint_and_a_clear_status(tmp_path, datasets_root):
    out = tmp_path / "run"
    proc = _submit(datasets_root, out, opts=["SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "100000"])
    job = _job_id(proc.stdout.readline())
    _wait_for(lambda: _iterations_done(out) >= 3, "3 iterations", proc)
    subprocess.run(["scancel", job], check=True, timeout=60)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:] + _logs(out)[-3000:]
    said = [line for line in stderr.splitlines() if line.strip()][-1]
    assert said.startswith(f"Job {job}: stopped by SIGTERM with a checkpoint written"), stderr
    tag = open(out / "last_checkpoint").read().strip()
    assert tag.startswith("model_0") and os.path.isfile(out / tag)
    assert torch.load(out / tag, map_location="cpu", weights_only=True)["iteration"] >= 3


def _task_pid(job: str, rank: int) -> int:
    """The pid of the job's task of `rank` (its SLURM_PROCID), found through /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if (b"submitit.core._submit" in cmdline and f"SLURM_JOB_ID={job}".encode() in environ
                and f"SLURM_PROCID={rank}".encode() in environ):
            return int(entry)
    raise AssertionError(f"no task of rank {rank} for job {job}")


def test_a_killed_rank_is_named_and_a_resubmission_continues(tmp_path, datasets_root):
    out = tmp_path / "run"
    training = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "4"]
    proc = _submit(datasets_root, out, "--gpus-per-node", "2", "--max-retries", "0", opts=training)
    job = _job_id(proc.stdout.readline())
    _wait_for(lambda: os.path.isfile(out / "model_0000004.pth"), "the first checkpoint", proc)
    os.kill(_task_pid(job, 1), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    said = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "rank(s) 1 ended without a word" in said[-1], stderr[-3000:] + _logs(out)[-3000:]
    at = torch.load(out / open(out / "last_checkpoint").read().strip(), map_location="cpu",
                    weights_only=True)["iteration"]

    again = _submit(datasets_root, out, "--gpus-per-node", "2", "--resume", opts=training)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert f"Resumed from {out / f'model_{at:07d}.pth'} at iteration {at}" in _logs(out)
    assert at < 40 and torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 40
