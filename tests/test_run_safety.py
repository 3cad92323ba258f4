"""A long run that nothing can lose, corrupt or hijack: checkpoints, locks, resume, preemption.

Most tests drive the real entry point (tools/train_net.py's `cli`) in this process,
so they can inject a signal or a full disk at an exact moment.
"""
import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

from conftest import FAST_CLI, REPO, SYNTHETIC_CONFIG, load_tool
from zenith_det.engine import AtomicCheckpointer, Trainer, default_setup
from zenith_det.engine import defaults as engine_defaults
from zenith_det.engine import precise_bn as engine_precise_bn
from zenith_det.engine.run_lock import acquire_run_lock
from zenith_det.errors import UserError
from zenith_det.utils import fileio

CONFIG = SYNTHETIC_CONFIG
FAST = FAST_CLI + ["SEED", "7"]
train_net = load_tool("train_net")


def cli(args, capsys):
    """Run tools/train_net.py in this process; returns (exit code, stderr lines)."""
    capsys.readouterr()
    code = train_net.cli(["--config", CONFIG, *FAST, *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def assert_one_line(code, err, *fragments):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


class Payload:
    """A pickle that runs code when loaded with weights_only=False: it creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_file(tmp_path, name="evil.pth", wrap_model=True):
    marker = str(tmp_path / "payload_ran")
    path = str(tmp_path / name)
    body = {"conv.weight": torch.zeros(1), "x": Payload(marker)}
    torch.save({"model": body, "iteration": 1} if wrap_model else body, path)
    return path, marker


# ------------------------------------------------------------------ 1. no code from a checkpoint

def test_crafted_pickle_as_model_weights_is_refused_and_never_runs(datasets_root, tmp_path, capsys):
    evil, marker = _evil_file(tmp_path)
    code, err = cli(["OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", evil], capsys)
    assert_one_line(code, err, "MODEL.WEIGHTS", evil, "not loaded")
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_crafted_pickle_is_refused_by_eval_coco_and_by_resume(datasets_root, tmp_path, capsys):
    evil, marker = _evil_file(tmp_path)
    eval_coco = load_tool("eval_coco")
    capsys.readouterr()
    code = eval_coco.main(["--config", CONFIG, *FAST, "DATASETS.TEST", "('synthetic_shapes_val',)", "MODEL.WEIGHTS", evil])
    assert_one_line(code, [line for line in capsys.readouterr().err.splitlines() if line.strip()], evil)
    assert not os.path.exists(marker)

    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"], capsys)[0] == 0
    os.replace(evil, out / "model_final.pth")  # the tagged checkpoint is replaced by a crafted one
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", "--resume"], capsys)
    assert_one_line(code, err, "model_final.pth")
    assert not os.path.exists(marker)


@pytest.mark.slow
def test_our_checkpoints_load_with_weights_only(tiny_cfg):
    default_setup(tiny_cfg, resume=False)
    trainer = Trainer(tiny_cfg)
    trainer.train()
    state = torch.load(os.path.join(tiny_cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)
    assert {"model", "optimizer", "iteration", "rng", "budget", "hooks", "config", "data"} <= set(state)
    assert state["iteration"] == tiny_cfg.SOLVER.MAX_ITER


# ------------------------------------------------------------------ 2. --resume never starts over

@pytest.mark.slow
def test_resume_refuses_when_no_checkpoint_loads(datasets_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"], capsys)[0] == 0
    for path in glob.glob(str(out / "model_*.pth")):
        with open(path, "r+b") as f:
            f.truncate(100)
    metrics_before = (out / "metrics.json").read_bytes()
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6", "--resume"], capsys)
    assert_one_line(code, err, "model_final.pth", "model_0000002.pth", "nothing was changed")
    assert (out / "metrics.json").read_bytes() == metrics_before
    assert os.path.getsize(out / "model_final.pth") == 100


@pytest.mark.slow
def test_resume_does_not_fall_back_past_an_io_error(tiny_cfg, monkeypatch):
    """An I/O error is not damage: rolling back to an older checkpoint would lose work."""
    cfg = tiny_cfg.clone()
    default_setup(cfg, resume=False)
    Trainer(cfg).train()
    trainer = Trainer(cfg)

    def failing_load(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", failing_load)
    with pytest.raises(UserError, match="model_final.pth could not be read .Input/output error"):
        trainer.resume_or_load(resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("tag", [b"", b"\n", b"model_\xff\xfe.pth", b"../other/model_final.pth"])
def test_a_bad_last_checkpoint_falls_back_to_the_checkpoints_beside_it(datasets_root, tmp_path, capsys, tag):
    """Empty or not UTF-8 (a crash while it was written), or naming another run's folder: warned
    about, and this folder's own newest checkpoint is resumed."""
    other = tmp_path / "other"
    assert cli(["OUTPUT_DIR", str(other), "SOLVER.MAX_ITER", "6"], capsys)[0] == 0
    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"], capsys)[0] == 0
    (out / "last_checkpoint").write_bytes(tag)
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", "--resume"], capsys)
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert f"Resumed from {out / 'model_final.pth'} at iteration 2" in log
    assert "Ignoring" in log and "last_checkpoint" in log


# ------------------------------------------------------------------ 3. one run per OUTPUT_DIR

@pytest.mark.slow
def test_a_folder_in_use_is_refused_naming_the_holder(tiny_cfg):
    out = tiny_cfg.OUTPUT_DIR
    os.makedirs(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from zenith_det.engine.run_lock import acquire_run_lock
            acquire_run_lock({out!r})
            print("locked", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in (False, True):
            with pytest.raises(UserError, match=rf"in use by another run \(pid {holder.pid} on "):
                default_setup(tiny_cfg.clone(), resume=resume)
        assert os.listdir(out) == [".zenith_run.lock"]
    finally:
        holder.kill()
        holder.wait()
    default_setup(tiny_cfg.clone(), resume=False)  # the kernel dropped the lock with the process


@pytest.mark.slow
def test_the_lock_is_not_held_by_forked_children_of_a_killed_holder(tiny_cfg):
    """DataLoader workers are forked children: once the run itself is dead, the folder is free."""
    out = tiny_cfg.OUTPUT_DIR
    os.makedirs(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, time
            from zenith_det.engine.run_lock import acquire_run_lock
            acquire_run_lock({out!r})
            child = os.fork()
            if child == 0:  # a worker, as the DataLoader forks them: outlives its parent
                time.sleep(60)
                os._exit(0)
            print(child, flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO),
    )
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child still runs
        default_setup(tiny_cfg.clone(), resume=True)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_symlink_at_the_lock_name_is_refused_and_its_target_kept(tiny_cfg, tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("not yours")
    os.makedirs(tiny_cfg.OUTPUT_DIR)
    os.symlink(victim, os.path.join(tiny_cfg.OUTPUT_DIR, ".zenith_run.lock"))
    with pytest.raises(UserError, match=r"\.zenith_run\.lock is a symbolic link"):
        default_setup(tiny_cfg, resume=False)
    assert victim.read_text() == "not yours"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["directory", "not_writable"])
def test_a_lock_file_that_cannot_be_opened_is_one_line(datasets_root, tmp_path, capsys, case):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".zenith_run.lock"
    if case == "directory":
        lock.mkdir()
        expected = "is a directory"
    else:
        lock.write_text("pid 1 on elsewhere\n")
        if os.geteuid() == 0:  # root writes through file modes; an immutable file refuses even root
            if subprocess.run(["chattr", "+i", str(lock)], capture_output=True).returncode:
                pytest.skip("chattr +i is not available on this file system")
        else:
            lock.chmod(0o444)
        expected = "cannot be opened for writing"
    try:
        code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"], capsys)
    finally:
        if case == "not_writable" and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(lock)])
    assert_one_line(code, err, str(lock), expected)


@pytest.mark.parametrize("leftover", ["config.yaml", "metrics.json"])
def test_an_earlier_run_without_checkpoint_counts(tiny_cfg, leftover):
    os.makedirs(tiny_cfg.OUTPUT_DIR)
    with open(os.path.join(tiny_cfg.OUTPUT_DIR, leftover), "w") as f:
        f.write("{}\n")
    with pytest.raises(UserError, match=rf"holds an earlier run \({leftover}\).*--resume"):
        default_setup(tiny_cfg, resume=False)


# ------------------------------------------------------------------ 4. resume means the same run

@pytest.mark.parametrize("key, value, shown", [
    ("SOLVER.OPTIMIZER", "SGD", "'SGD' here but 'ZENITH'"),
    ("SOLVER.ZENITH.WINDOW", "9", "9 here but 5"),
    ("SOLVER.ZENITH.START", "partial", "'partial' here but 'full'"),
    ("MODEL.META_ARCHITECTURE", "FasterRCNN", "'FasterRCNN' here but 'MaskRCNN'"),
    ("MODEL.BACKBONE.NAME", "resnet18_fpn", "'resnet18_fpn' here but 'tiny_fpn'"),
    ("DATASETS.TRAIN", "('synthetic_shapes_val',)", "('synthetic_shapes_val',) here but ('synthetic_shapes_train',)"),
    ("SOLVER.IMS_PER_BATCH", "4", "4 here but 2"),
])
@pytest.mark.slow
def test_resume_refuses_a_change_that_makes_another_run(datasets_root, tmp_path, capsys, key, value, shown):
    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"], capsys)[0] == 0
    config_before = (out / "config.yaml").read_text()
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", key, value, "--resume"], capsys)
    assert_one_line(code, err, key, shown)
    assert (out / "config.yaml").read_text() == config_before


@pytest.mark.slow
@pytest.mark.parametrize("change", ["rename_category", "remove_images"])
def test_resume_refuses_training_data_changed_under_the_same_name(datasets_root, tmp_path, capsys, change):
    from zenith_det.data import generate_synthetic_coco

    json_file, image_root = generate_synthetic_coco(str(tmp_path / "mine"), "shapes", "train", 6, seed=3)
    original = open(json_file, "rb").read()
    args = ["DATASETS.REGISTER", f"[['mine', '{json_file}', '{image_root}']]", "DATASETS.TRAIN", "('mine',)",
            "OUTPUT_DIR", str(tmp_path / "run")]
    assert cli([*args, "SOLVER.MAX_ITER", "2"], capsys)[0] == 0
    data = json.loads(original)
    if change == "rename_category":
        data["categories"][0]["name"] = "blob"
    else:
        kept = {img["id"] for img in data["images"][:3]}
        data["images"] = [img for img in data["images"] if img["id"] in kept]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    json.dump(data, open(json_file, "w"))
    code, err = cli([*args, "SOLVER.MAX_ITER", "4", "--resume"], capsys)
    assert_one_line(code, err, "training data mine", json_file, "model_final.pth", "sha256")
    open(json_file, "wb").write(original)  # the same bytes again: the run continues
    assert cli([*args, "SOLVER.MAX_ITER", "4", "--resume"], capsys)[0] == 0


@pytest.mark.slow
def test_resume_applies_and_logs_continuing_changes(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.MAX_ITER = 4
    default_setup(cfg, resume=False)
    Trainer(cfg).train()

    changed = tiny_cfg.clone()
    changed.SOLVER.MAX_ITER = 6
    changed.SOLVER.BASE_LR = 0.005
    changed.SOLVER.MOMENTUM = 0.5
    changed.SOLVER.WEIGHT_DECAY = 0.001
    changed.SOLVER.MAX_TIME_HOURS = 2.0
    default_setup(changed, resume=True)
    trainer = Trainer(changed)
    assert trainer.resume_or_load(resume=True)
    log = open(os.path.join(changed.OUTPUT_DIR, "log.txt")).read()
    for fragment in ("SOLVER.MOMENTUM: 0.9 -> 0.5", "SOLVER.WEIGHT_DECAY: 0.0001 -> 0.001", "SOLVER.MAX_ITER: 4 -> 6"):
        assert fragment in log
    groups = trainer.optimizer.param_groups
    assert all(g["momentum"] == 0.5 for g in groups)
    assert {g["weight_decay"] for g in groups} <= {0.001, 0.0}  # norm layers keep WEIGHT_DECAY_NORM
    assert max(g["initial_lr"] for g in groups) == pytest.approx(0.005)
    assert trainer.clock.max_seconds == 2 * 3600
    trainer.train()
    assert trainer.iter == 6
    saved = open(os.path.join(changed.OUTPUT_DIR, "config.yaml")).read()
    assert "MOMENTUM: 0.5" in saved and "MAX_ITER: 6" in saved
    state = torch.load(os.path.join(changed.OUTPUT_DIR, "model_final.pth"), weights_only=True)
    assert "MOMENTUM: 0.5" in state["config"]


@pytest.mark.slow
def test_resume_without_seed_keeps_the_runs_seed(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SEED = 1234
    cfg.SOLVER.MAX_ITER = 2
    default_setup(cfg, resume=False)
    Trainer(cfg).train()
    again = tiny_cfg.clone()
    again.SEED = -1
    default_setup(again, resume=True)
    trainer = Trainer(again)
    trainer.resume_or_load(resume=True)
    assert trainer.cfg.SEED == 1234


# ------------------------------------------------------------------ 5. preemption at any moment

def _signal_self_during(monkeypatch, module, name):
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.slow
def test_sigterm_during_final_evaluation_exits_75_and_resume_evaluates(datasets_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "('synthetic_shapes_val',)", "TEST.EVAL_PERIOD", "0"]
    with monkeypatch.context() as m:
        _signal_self_during(m, engine_defaults, "build_detection_test_loader")
        capsys.readouterr()
        code = train_net.cli(["--config", CONFIG, *FAST, *args])
        printed = capsys.readouterr()
    assert code == 75, printed.err
    assert not (out / "inference" / "coco_instances_results.json").exists()  # the evaluation was abandoned
    # The summary says so, and names no results file that was never written.
    assert "stopped before its final evaluation finished; --resume evaluates" in printed.out, printed.out
    assert "DATASETS.TEST is empty" not in printed.out and "results:" not in printed.out, printed.out
    code, err = cli(args + ["--resume"], capsys)
    assert code == 0, err
    assert (out / "inference" / "coco_instances_results.json").exists()


@pytest.mark.slow
def test_sigterm_during_the_batchnorm_recomputation_exits_75_and_resume_finishes(datasets_root, tmp_path, capsys,
                                                                              monkeypatch):
    # A stop inside fvcore's update_bn_stats (an evaluation's TEST.PRECISE_BN) used to leave its hooks on
    # the BatchNorm layers: the stop checkpoint's own recomputation then failed, exit 1 and no checkpoint.
    out = tmp_path / "run"
    args = ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "('synthetic_shapes_val',)",
            "TEST.EVAL_PERIOD", "1", "TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "2"]
    real_forward = engine_precise_bn._TrainingForward.forward
    sent = []

    def forward_then_stop(self, batch):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_forward(self, batch)

    with monkeypatch.context() as m:
        m.setattr(engine_precise_bn._TrainingForward, "forward", forward_then_stop)
        code, err = cli(args, capsys)
    assert sent and code == 75, err
    assert (out / "last_checkpoint").exists()
    code, err = cli(args + ["--resume"], capsys)
    assert code == 0, err
    assert (out / "model_final.pth").exists() and (out / "inference" / "coco_instances_results.json").exists()


@pytest.mark.slow
def test_sigterm_during_final_checkpoint_exits_75_with_the_checkpoint(datasets_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1000"]
    real_save = AtomicCheckpointer.save

    def save(self, name, state):
        if name == "model_final":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, name, state)

    with monkeypatch.context() as m:
        m.setattr(AtomicCheckpointer, "save", save)
        code, err = cli(args, capsys)
    assert code == 75, err
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["iteration"] == 2
    assert not glob.glob(str(out / (fileio.TEMP_PREFIX + "*")))


@pytest.mark.slow
def test_ctrl_c_twice_during_a_checkpoint_write_completes_it_then_stops_in_one_line(datasets_root, tmp_path, capsys,
                                                                                  monkeypatch):
    """The second Ctrl-C landed inside torch.save's zip writer: a RuntimeError traceback. It now
    waits for the file and its tag, then stops at once: exit 130, one line, the checkpoint whole."""
    out = tmp_path / "run"
    args = ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"]
    real_save = torch.save

    def save_interrupted_twice(obj, f, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # "stop at the next safe point"
        os.kill(os.getpid(), signal.SIGINT)  # "now", in the middle of the write
        return real_save(obj, f, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save_interrupted_twice)
        code, err = cli(args, capsys)
    assert code == 130 and len(err) == 1 and "second Ctrl-C" in err[0], err
    tagged = (out / "last_checkpoint").read_text()
    assert torch.load(out / tagged, weights_only=True)["iteration"] == 2  # the checkpoint being written, whole
    assert not glob.glob(str(out / (fileio.TEMP_PREFIX + "*")))
    code, err = cli(args + ["--resume"], capsys)
    assert code == 0, err


@pytest.mark.slow
def test_sigterm_before_training_starts_exits_75(datasets_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_self_during(m, engine_defaults, "build_detection_train_loader")
        code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3"], capsys)
    assert code == 75, err
    assert torch.load(out / "model_0000000.pth", weights_only=True)["iteration"] == 0
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3", "--resume"], capsys)
    assert code == 0, err


# ------------------------------------------------------------------ 6. weights that don't fit

def test_model_weights_that_do_not_fit_are_refused(datasets_root, tmp_path, capsys):
    backbone = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), backbone)
    code, err = cli(["OUTPUT_DIR", str(tmp_path / "a"), "SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", backbone], capsys)
    assert_one_line(code, err, "MODEL.WEIGHTS", "fits only 0 of", "MODEL.BACKBONE.WEIGHTS")


@pytest.mark.slow
def test_model_weights_log_how_many_tensors_loaded(datasets_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"], capsys)[0] == 0
    code, _ = cli(["OUTPUT_DIR", str(tmp_path / "b"), "SOLVER.MAX_ITER", "1",
                   "MODEL.WEIGHTS", str(out / "model_final.pth")], capsys)
    assert code == 0
    log = open(tmp_path / "b" / "log.txt").read()
    (n, m), = {tuple(int(x) for x in line.split("loaded ")[1].split(" tensors")[0].split(" of "))
               for line in log.splitlines() if "MODEL.WEIGHTS: loaded" in line}
    assert n == m > 0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong_depth", "corrupt", "detection_model"])
def test_bad_backbone_weights_are_one_line(datasets_root, tmp_path, capsys, case):
    path = str(tmp_path / "backbone.pth")
    if case == "wrong_depth":
        torch.save(torchvision.models.resnet18().state_dict(), path)
    elif case == "corrupt":
        torch.save(torchvision.models.resnet50().state_dict(), path)
        with open(path, "r+b") as f:
            f.truncate(4096)
    else:
        torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(1)}}, path)
    code, err = cli(["OUTPUT_DIR", str(tmp_path / "o"), "SOLVER.MAX_ITER", "1", "MODEL.BACKBONE.NAME", "resnet50_fpn",
                     "MODEL.BACKBONE.NORM", "BN", "MODEL.BACKBONE.WEIGHTS", path], capsys)
    assert_one_line(code, err, "MODEL.BACKBONE.WEIGHTS", path)


def test_eval_only_without_weights_is_refused(datasets_root, tmp_path, capsys):
    code, err = cli(["OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", "('synthetic_shapes_val',)", "--eval-only"], capsys)
    assert_one_line(code, err, "--eval-only", "MODEL.WEIGHTS")
    code, err = cli(["OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", "('synthetic_shapes_val',)",
                     "--eval-only", "--resume"], capsys)
    assert_one_line(code, err, "no checkpoint")


# ------------------------------------------------------------------ 7/9. full disk, temporary files

@pytest.mark.slow
def test_full_disk_while_checkpointing_keeps_earlier_checkpoints(datasets_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_fill_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fill_disk)
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"], capsys)
    monkeypatch.undo()
    assert_one_line(code, err, "disk is full", str(out))
    assert open(out / "last_checkpoint").read() == "model_0000002.pth"
    assert torch.load(out / "model_0000002.pth", weights_only=True)["iteration"] == 2
    assert not glob.glob(str(out / (fileio.TEMP_PREFIX + "*")))
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "--resume"], capsys)
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("size", ["13m", "17m", "21m"])
def test_a_real_full_disk_while_checkpointing_is_one_line(datasets_root, small_filesystem, capsys, size):
    """Where the space runs out decides whether torch.save reports ENOSPC as an OSError or as a
    RuntimeError ("unexpected pos"): either way the line must say the disk is full."""
    out = small_filesystem(size) / "run"  # one 11.8 MB checkpoint fits, a second does not
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"], capsys)
    assert_one_line(code, err, "disk is full", str(out))
    assert open(out / "last_checkpoint").read() == "model_0000002.pth"
    assert torch.load(out / "model_0000002.pth", weights_only=True)["iteration"] == 2
    assert not glob.glob(str(out / (fileio.TEMP_PREFIX + "*")))


@pytest.mark.slow
def test_stale_temporaries_are_removed_at_the_next_start(datasets_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"], capsys)[0] == 0
    stale = [out / (fileio.TEMP_PREFIX + "model_0000004.pth.abc123"),
             out / "inference" / (fileio.TEMP_PREFIX + "results.json.x1")]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "--resume"], capsys)[0] == 0
    assert not any(p.exists() for p in stale)
    log = (out / "log.txt").read_text()
    assert all(f"Removed {p}, a temporary file left by an interrupted run" in log for p in stale)


@pytest.mark.slow
def test_clean_up_never_follows_a_symlinked_subfolder(datasets_root, tmp_path, capsys):
    """Another run's in-flight temporaries, reachable through a link in this OUTPUT_DIR, stay."""
    other = tmp_path / "other_run"
    other.mkdir()
    in_flight = other / (fileio.TEMP_PREFIX + "model_0000100.pth.k2j4")
    in_flight.write_bytes(b"being written by another run")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(other, out / "shared")
    os.symlink(other, out / (fileio.TEMP_PREFIX + "link"))  # a link with our prefix: the link goes, not its target
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"], capsys)[0] == 0
    assert in_flight.read_bytes() == b"being written by another run"
    assert not os.path.lexists(out / (fileio.TEMP_PREFIX + "link"))


@pytest.mark.slow
def test_metrics_cut_mid_line_by_a_crash_lose_no_record_on_resume(datasets_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"], capsys)[0] == 0
    with open(out / "metrics.json", "a") as f:
        f.write('{"iteration": 2, "total_lo')  # the crash came mid-write
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", "--resume"], capsys)[0] == 0
    lines = (out / "metrics.json").read_text().splitlines()
    assert lines.count('{"iteration": 2, "total_lo') == 1
    records = [json.loads(line) for line in lines if line != '{"iteration": 2, "total_lo']
    assert {r["iteration"] for r in records} == {0, 1, 2, 3}


@pytest.mark.slow
def test_a_run_refused_before_its_first_iteration_leaves_no_metrics(datasets_root, tmp_path, capsys):
    """Otherwise the folder 'holds an earlier run' and the corrected command needs --resume."""
    from zenith_det.data import generate_synthetic_coco

    json_file, image_root = generate_synthetic_coco(str(tmp_path / "crowd"), "shapes", "train", 4, seed=1)
    data = json.load(open(json_file))
    for a in data["annotations"]:
        a["iscrowd"] = 1  # accepted as data, but nothing left to train on
    json.dump(data, open(json_file, "w"))
    out = tmp_path / "run"
    code, err = cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "DATASETS.REGISTER",
                     f"[['crowd', '{json_file}', '{image_root}']]", "DATASETS.TRAIN", "('crowd',)"], capsys)
    assert_one_line(code, err, "no image has a usable annotation")
    left = os.listdir(out)
    assert "metrics.json" not in left and not [n for n in left if n.startswith("events.out.tfevents")], left
    assert cli(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"], capsys)[0] == 0  # no --resume needed


def test_an_output_dir_whose_name_is_not_utf8_is_one_line(datasets_root, tmp_path, capsys):
    out = os.fsdecode(bytes(tmp_path) + b"/run_\xff")
    code, err = cli(["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "1"], capsys)
    assert_one_line(code, err, "OUTPUT_DIR", "run_\\xff", "UTF-8")
    assert not os.path.exists(out)


def test_atomic_write_uses_fresh_names_and_plain_permissions(tmp_path):
    target = tmp_path / "stats.json"
    # A planted file (or link) at a guessable temporary name is neither followed nor clobbered.
    planted = tmp_path / f"stats.json.tmp.{os.getpid()}"
    planted.write_text("keep")
    fileio.atomic_write_json({"a": 1}, str(target))
    assert json.loads(target.read_text()) == {"a": 1}
    assert planted.read_text() == "keep"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["stats.json", planted.name]


def test_a_file_system_without_locks_still_runs_with_a_warning(tiny_cfg, monkeypatch, caplog):
    def no_locks(fd, op, *args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    os.makedirs(tiny_cfg.OUTPUT_DIR)
    with caplog.at_level("WARNING", logger="zenith_det.engine.run_lock"):
        acquire_run_lock(tiny_cfg.OUTPUT_DIR)
    assert "Cannot lock" in caplog.text and "No locks available" in caplog.text


@pytest.mark.slow
def test_an_output_dir_deleted_while_training_stops_the_run_in_one_line(datasets_root, tmp_path):
    """The folder, its checkpoints and its lock deleted under a training run (with loader workers):
    the run used to go on, exit 0 and list files that were gone, while a second --resume run could
    start in the same path. It now stops at the next step, exit 2, and writes nothing more."""
    import time

    out = tmp_path / "run"
    env = dict(os.environ, ZENITH_DATASETS=datasets_root, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    args = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config", SYNTHETIC_CONFIG, *FAST_CLI,
            "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_ITER", "400", "SOLVER.CHECKPOINT_PERIOD", "2",
            "LOG_PERIOD", "1000", "OUTPUT_DIR", str(out)]
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not glob.glob(str(out / "model_0*.pth")):
        assert run.poll() is None and time.time() < deadline, run.stderr.read()[-3000:]
        time.sleep(0.05)
    shutil.rmtree(out)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    # The guard at the next step, or a checkpoint of this step that found the folder gone: either says so.
    assert len(errors) == 1 and ("was lost while training" in errors[0] or "was deleted while this ran" in errors[0])
    assert "Traceback" not in err
    assert not out.exists()  # nothing was written after the deletion: no folder made again


def test_a_run_folder_deleted_or_made_again_is_lost(tmp_path):
    from zenith_det.engine.run_lock import release_run_lock, run_folder_lost

    out = str(tmp_path / "run")
    os.makedirs(out)
    acquire_run_lock(out)
    try:
        assert run_folder_lost(out) is None
        shutil.rmtree(out)
        assert "is gone" in run_folder_lost(out)
        os.makedirs(out)  # another run's folder at the same path, with a lock of its own
        open(os.path.join(out, ".zenith_run.lock"), "w").close()
        assert "not the one this run holds" in run_folder_lost(out)
    finally:
        release_run_lock(out)


def test_a_write_into_a_deleted_folder_does_not_claim_earlier_files_are_intact(tmp_path):
    from zenith_det.utils.fileio import write_error

    message = str(write_error(str(tmp_path / "gone" / "metrics.json"), FileNotFoundError(2, "No such file")))
    assert "was deleted while this ran" in message and "intact" not in message
