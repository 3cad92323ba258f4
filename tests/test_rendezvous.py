"""The rendezvous of a multi-process job waits in bounded, interruptible steps and says for whom."""
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from conftest import FAST_CLI, REPO, SYNTHETIC_CONFIG
from zenith_det.engine.preemption import Preempted, preemption_signals
from zenith_det.engine.rendezvous import rendezvous
from zenith_det.errors import UserError

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_whose_rank_0_never_comes_gives_up_with_one_line(caplog):
    port = _free_port()
    with caplog.at_level(logging.WARNING), pytest.raises(UserError) as e:
        rendezvous("gloo", "127.0.0.1", port, 1, 2, 1.0, timedelta(seconds=5))
    assert f"rank 1: gave up after 1 s waiting for rank 0's rendezvous at 127.0.0.1:{port}" in str(e.value)
    assert "\n" not in str(e.value) and "--rendezvous-timeout-s" in str(e.value)
    assert "waiting for rank 0's rendezvous" in caplog.text  # said at once, not after the wait


def test_rank_0_names_the_ranks_that_never_joined(caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(UserError) as e:
        rendezvous("gloo", "127.0.0.1", _free_port(), 0, 3, 1.0, timedelta(seconds=5))
    assert "waiting for rank(s) 1, 2 to join" in str(e.value) and "(1 of 3 joined)" in str(e.value)
    assert "1 of 3 processes joined" in caplog.text


def test_a_stop_signal_ends_the_wait_at_once():
    signals = preemption_signals().install()
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    try:
        timer.start()
        with pytest.raises(Preempted, match="SIGTERM"):
            rendezvous("gloo", "127.0.0.1", _free_port(), 1, 2, 600.0, timedelta(seconds=5))
    finally:
        timer.cancel()
        signals.uninstall()
        signals.install().uninstall()  # a fresh install forgets the SIGTERM: later tests start clean
    # Not a timing assertion on speed: a wait of 600 s that ended at all ended because of the signal.
    assert time.monotonic() - started < 600


def _srun_env(datasets_root, rank, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env.update(ZENITH_DATASETS=datasets_root, PYTHONPATH=REPO, OMP_NUM_THREADS="1", SLURM_PROCID=str(rank),
               SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="4242", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_srun_variables_promising_a_task_that_never_starts(rank, tmp_path, datasets_root):
    """srun-style variables for 2 tasks, 1 started: one line naming what is missing, exit 2, nothing written."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, TRAIN_NET, "--config", SYNTHETIC_CONFIG, "--rendezvous-timeout-s", "3",
                             *FAST_CLI, "OUTPUT_DIR", str(out)], env=_srun_env(datasets_root, rank, _free_port()),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert ("waiting for rank(s) 1 to join" if rank == 0 else "waiting for rank 0's rendezvous") in errors[0]
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_while_waiting_for_the_rendezvous_stops_with_exit_75(tmp_path, datasets_root):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, TRAIN_NET, "--config", SYNTHETIC_CONFIG, *FAST_CLI,
                                "OUTPUT_DIR", str(out)], env=_srun_env(datasets_root, 0, _free_port()),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = ""
    for line in process.stdout:  # the wait is announced before the signal is sent
        said += line
        if "waiting for rank(s) 1" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    said += rest
    assert process.returncode == 75, said[-2000:]
    assert "SIGTERM received while waiting for the rendezvous" in said and "Traceback" not in said
    assert not out.exists()
