"""tools/train_net.py as a user runs it: one-line errors, stop and resume, unseen data."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import FAST_CLI, REPO, SYNTHETIC_CONFIG
from zenith_det.data import generate_synthetic_coco

pytestmark = pytest.mark.slow

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIG = SYNTHETIC_CONFIG
FAST = FAST_CLI


def _env(datasets_root):
    env = dict(os.environ, ZENITH_DATASETS=datasets_root, PYTHONPATH=REPO, OMP_NUM_THREADS="2")
    return env


def train_net(args, datasets_root, **kwargs):
    return subprocess.run([sys.executable, TRAIN_NET, *args], env=_env(datasets_root), capture_output=True,
                          text=True, timeout=600, **kwargs)


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    return str(path)


@pytest.mark.parametrize(
    "case",
    ["flag", "missing_config", "unknown_key", "wrong_type", "unwritable", "missing_weights", "missing_json", "malformed_json",
     "bad_device"],
)
def test_bad_input_is_one_clear_line(case, datasets_root, tmp_path, bad_json):
    out = ["OUTPUT_DIR", str(tmp_path / "out")]
    args, fragments = {
        "flag": (["--config", CONFIG, "--epochs", "3"], ["--epochs"]),
        "missing_config": (["--config", str(tmp_path / "nope.yaml")], ["nope.yaml"]),
        "unknown_key": (["--config", CONFIG, "SOLVER.BASE_LRR", "0.1"], ["SOLVER.BASE_LRR"]),
        "wrong_type": (["--config", CONFIG, "SOLVER.MAX_ITER", "lots"], ["SOLVER.MAX_ITER"]),
        "bad_device": (["--config", CONFIG, *out, "MODEL.DEVICE", "gpu0"], ["MODEL.DEVICE", "gpu0"]),
        "unwritable": (["--config", CONFIG, "OUTPUT_DIR", "/proc/zenith_nope"], ["OUTPUT_DIR", "/proc/zenith_nope"]),
        "missing_weights": (["--config", CONFIG, *out, "MODEL.WEIGHTS", str(tmp_path / "w.pth")], ["MODEL.WEIGHTS", "w.pth"]),
        "missing_json": (["--config", CONFIG, *out, "DATASETS.REGISTER", f"[['x', '{tmp_path}/none.json', '{tmp_path}']]",
                          "DATASETS.TRAIN", "('x',)"], ["none.json"]),
        "malformed_json": (["--config", CONFIG, *out, "DATASETS.REGISTER", f"[['x', '{bad_json}', '{tmp_path}']]",
                            "DATASETS.TRAIN", "('x',)"], ["broken.json"]),
    }[case]
    result = train_net(args, datasets_root)
    _one_line_error(result, *fragments)
    if case not in ("unwritable", "flag", "missing_config", "unknown_key", "wrong_type", "bad_device"):
        # Nothing that could damage an earlier run was written.
        assert not any(n.startswith("model_") or n == "last_checkpoint" for n in os.listdir(tmp_path / "out"))


def _wait_for_iteration(metrics, iteration, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        if os.path.exists(metrics):
            with open(metrics) as f:
                done = [json.loads(line)["iteration"] for line in f if line.strip()]
            if done and max(done) >= iteration:
                return
        time.sleep(0.2)
    raise AssertionError("training made no progress")


def _final_weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # a scheduler; a closed terminal or ssh
def test_a_stop_signal_checkpoints_exits_75_and_resume_finishes(datasets_root, tmp_path, sig):
    out = str(tmp_path / "run")
    args = ["--config", CONFIG, *FAST, "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", out]
    proc = subprocess.Popen([sys.executable, TRAIN_NET, *args], env=_env(datasets_root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_iteration(os.path.join(out, "metrics.json"), 2, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    stopped_at = int(open(os.path.join(out, "last_checkpoint")).read()[len("model_"):-len(".pth")])
    assert 2 <= stopped_at < 40
    resumed = train_net(args + ["--resume"], datasets_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Starting training from iteration {stopped_at}" in resumed.stdout
    assert "Stopped after 40 iterations" in resumed.stdout


def test_sigkill_at_a_random_iteration_then_resume_matches_uninterrupted(datasets_root, tmp_path):
    common = ["--config", CONFIG, *FAST, "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "2"]
    whole = str(tmp_path / "whole")
    assert train_net(common + ["OUTPUT_DIR", whole], datasets_root).returncode == 0

    killed = str(tmp_path / "killed")
    args = common + ["OUTPUT_DIR", killed]
    # Seeded, so a failure names a kill point that a rerun reproduces (ZENITH_TEST_SEED varies it).
    kill_at = random.Random(int(os.environ.get("ZENITH_TEST_SEED", "0"))).randint(3, 8)
    proc = subprocess.Popen([sys.executable, TRAIN_NET, *args], env=_env(datasets_root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_iteration(os.path.join(killed, "metrics.json"), kill_at, proc)
    proc.kill()
    proc.wait()
    resumed = train_net(args + ["--resume"], datasets_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = _final_weights(whole), _final_weights(killed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after SIGKILL at iteration {kill_at}"


def _caught_signals(pid):
    """The signals a process has handlers for, from the kernel (/proc/PID/status SigCgt)."""
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line.split()[1] for line in f if line.startswith("SigCgt:")), 16)
    return {s for s in signal.Signals if mask >> (s - 1) & 1}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_during_start_up_exits_75_at_once(datasets_root, tmp_path, sig):
    """Sent the moment the process handles SIGTERM at all: during its imports, before any file is written."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, TRAIN_NET, "--config", CONFIG, *FAST, "OUTPUT_DIR", str(out)],
                            env=_env(datasets_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while signal.SIGTERM not in _caught_signals(proc.pid):
        assert proc.poll() is None and time.time() < deadline, "the process never handled SIGTERM"
        time.sleep(0.001)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    assert not out.exists()  # stopped before the run claimed its folder: nothing to resume, nothing lost


def test_sigkill_with_loader_workers_then_immediate_resume(datasets_root, tmp_path):
    """An elastic agent restarts a killed rank at once: the dead run's forked workers must not hold the folder."""
    out = str(tmp_path / "run")
    args = ["--config", CONFIG, *FAST, "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "2",
            "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", out]
    proc = subprocess.Popen([sys.executable, TRAIN_NET, *args], env=_env(datasets_root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_iteration(os.path.join(out, "metrics.json"), 3, proc)
    workers = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert len(workers) >= 2, "the loader workers were not running"
    proc.kill()
    proc.wait()
    resumed = subprocess.Popen([sys.executable, TRAIN_NET, *args, "--resume"], env=_env(datasets_root),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert any(_alive(w) for w in workers), "the orphaned workers were gone before the resume: nothing tested"
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert "Stopped after 12 iterations" in stdout


def test_a_disk_that_fills_during_training_is_one_line(datasets_root, small_filesystem, tmp_path):
    """metrics.json, log.txt and TensorBoard are written every iteration: a disk filled mid-run by
    someone else stops the run with one line naming the folder."""
    disk = small_filesystem("8m")
    out = str(disk / "run")
    args = ["--config", CONFIG, *FAST, "SOLVER.MAX_ITER", "5000", "SOLVER.CHECKPOINT_PERIOD", "5000", "OUTPUT_DIR", out]
    proc = subprocess.Popen([sys.executable, TRAIN_NET, *args], env=_env(datasets_root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_iteration(os.path.join(out, "metrics.json"), 2, proc)
    with open(disk / "filler", "wb", buffering=0) as f:  # what another job on the same disk would do
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    stdout, stderr = proc.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, stderr[-2000:]
    assert len(lines) == 1 and "disk is full" in lines[0] and out in lines[0], stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert not [n for n in os.listdir(out) if n.startswith(".zenith_tmp.")]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_unseen_coco_dataset_trains_by_config_alone(datasets_root, tmp_path):
    """Non-contiguous ids, crowd, images without annotations, grayscale and RGBA images."""
    json_file, image_root = generate_synthetic_coco(str(tmp_path / "mine"), "shapes", "train", 12, seed=123)
    data = json.load(open(json_file))
    assert sorted(c["id"] for c in data["categories"]) != list(range(1, len(data["categories"]) + 1))
    assert any(a["iscrowd"] for a in data["annotations"])
    annotated = {a["image_id"] for a in data["annotations"]}
    assert any(img["id"] not in annotated for img in data["images"])
    for img, mode in zip(data["images"][:4], ["L", "RGBA", "L", "RGBA"]):
        path = os.path.join(image_root, img["file_name"])
        Image.open(path).convert(mode).save(os.path.splitext(path)[0] + ".png")
        os.remove(path)
        img["file_name"] = os.path.splitext(img["file_name"])[0] + ".png"
    json.dump(data, open(json_file, "w"))
    out = str(tmp_path / "out")
    result = train_net([
        "--config", CONFIG, *FAST, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", out,
        "DATASETS.REGISTER", f"[['mine', '{json_file}', '{image_root}']]",
        "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "('mine',)",
    ], datasets_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bbox" in result.stdout and "segm" in result.stdout
    results = json.load(open(os.path.join(out, "inference", "coco_instances_results.json")))
    assert {r["category_id"] for r in results} <= {c["id"] for c in data["categories"]}
