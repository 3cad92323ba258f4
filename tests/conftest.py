import contextlib
import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import torch

from zenith_det.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_CONFIG = os.path.join(REPO, "configs", "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml")
# Overrides that make tools/train_net.py on SYNTHETIC_CONFIG train at test speed on the CPU.
FAST_CLI = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.ZENITH.WINDOW", "5", "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "TEST.PRECISE_BN.NUM_ITER", "2", "LOG_PERIOD", "1", "DETERMINISTIC", "True",
]


def _load_file(module_name: str, path: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """tools/<name>.py as a module, so a test can call its entry point in this process."""
    return _load_file(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module ("common" for their shared module). Run as
    `python benchmarks/<name>.py`, a script imports benchmarks/common.py beside it as `common`;
    here that module is registered under the same name, so no test touches sys.path."""
    path = os.path.join(REPO, "benchmarks", "common.py")
    common = sys.modules.get("common")
    if common is None:
        common = sys.modules["common"] = _load_file("common", path)
    elif not os.path.samefile(getattr(common, "__file__", None) or os.devnull, path):
        raise ImportError(f"a module named 'common' is imported already ({common!r}), not {path}")
    if name == "common":
        return common
    return _load_file(name, os.path.join(REPO, "benchmarks", f"{name}.py"))

# Tests run on 2 cores; more threads only add contention. ZENITH_TEST_THREADS runs the suite with
# another count (1 or 4, say) to show that no result depends on the reduction order it brings.
TEST_THREADS = int(os.environ.get("ZENITH_TEST_THREADS", "2"))
torch.set_num_threads(TEST_THREADS)


def _torch_global_state():
    """Process-wide torch settings a test might change and leave for the next one."""
    return {
        "threads": torch.get_num_threads(),
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "anomaly detection": torch.is_anomaly_enabled(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
    }


def _set_torch_global_state(state):
    torch.set_num_threads(state["threads"])
    torch.set_default_dtype(state["default dtype"])
    torch.set_grad_enabled(state["grad mode"])
    torch.set_anomaly_enabled(state["anomaly detection"])
    torch.use_deterministic_algorithms(state["deterministic algorithms"])
    torch.backends.cudnn.benchmark = state["cudnn.benchmark"]


# Set on purpose by default_setup() (a job's process setup, as detectron2's) for DETERMINISTIC
# configs: restored after each test, not reported.
_SET_BY_JOB_SETUP = ("deterministic algorithms", "cudnn.benchmark")


# What every test starts from. Compared with this, not with the state a test found: a module-
# scoped fixture is set up before a test's own fixtures, and its changes would pass unseen.
_SESSION_TORCH_STATE = _torch_global_state()


@pytest.fixture(autouse=True)
def _torch_state_is_left_as_found():
    """Every test leaves torch's process-wide state as the session started with it: restored here
    whatever happened, and a test (or its fixtures) that changed it, other than through
    default_setup, fails."""
    before = _SESSION_TORCH_STATE
    yield
    after = _torch_global_state()
    _set_torch_global_state(before)
    leaked = [f"{k} {before[k]} -> {after[k]}" for k in before if before[k] != after[k] and k not in _SET_BY_JOB_SETUP]
    if leaked:
        pytest.fail(f"the test changed torch's global state and left it so: {'; '.join(leaked)}")


@contextlib.contextmanager
def zenith_logger_restored():
    """default_setup() takes over the zenith_det logger (propagation off, its own handlers);
    give it back afterwards, so later tests that read logs with caplog still see them."""
    logger = logging.getLogger("zenith_det")
    propagate, level, handlers = logger.propagate, logger.level, list(logger.handlers)
    try:
        yield
    finally:
        for h in list(logger.handlers):
            if h not in handlers:
                logger.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in logger.handlers:
                logger.addHandler(h)
        logger.propagate, logger.level = propagate, level


@pytest.fixture(autouse=True)
def _restore_zenith_logger():
    """Around every test. A module- or session-scoped fixture that trains is set up before this
    one runs, so it wraps its own setup in zenith_logger_restored() too."""
    with zenith_logger_restored():
        yield


@pytest.fixture(autouse=True)
def _fast_tests_neither_train_nor_spawn(request, monkeypatch):
    """The fast tier (-m "not slow") stays fast because a test that trains or starts a process
    must say so: outside the slow marker, a training loop or a new process fails the test."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    import multiprocessing.process

    from zenith_det.engine.train_loop import TrainerBase

    def refuse(what):
        def refused(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} {what}: mark it @pytest.mark.slow (the fast tier neither trains "
                        "nor starts processes)", pytrace=False)
        return refused

    monkeypatch.setattr(TrainerBase, "train", refuse("trains"))
    if "detectron2.engine" in sys.modules:  # only where a test already uses detectron2
        monkeypatch.setattr(sys.modules["detectron2.engine"].TrainerBase, "train", refuse("trains"))
    monkeypatch.setattr(subprocess, "Popen", refuse("starts a process"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("starts a process"))
    yield


@pytest.fixture
def small_filesystem(tmp_path):
    """mount_at(size) -> a folder on a real tmpfs of that size (a real ENOSPC); skips where mounting is not allowed."""
    mounted = []

    def mount_at(size):
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount_at
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """One generated copy of the synthetic datasets for the whole session."""
    root = str(tmp_path_factory.mktemp("datasets"))
    previous = os.environ.get("ZENITH_DATASETS")
    os.environ["ZENITH_DATASETS"] = root
    yield root
    if previous is None:
        os.environ.pop("ZENITH_DATASETS", None)
    else:
        os.environ["ZENITH_DATASETS"] = previous


@pytest.fixture
def tiny_cfg(datasets_root, tmp_path):
    """The synthetic Mask R-CNN config cut down to test speed (CPU, deterministic)."""
    return load_config(
        os.path.join(REPO, "configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml"),
        [
            "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "96",
            "INPUT.MAX_SIZE_TEST", "128",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", "8",
            "SOLVER.WARMUP_ITERS", "3",
            "SOLVER.CHECKPOINT_PERIOD", "4",
            "SOLVER.ZENITH.WINDOW", "5",
            "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.TEST", "()",
            "TEST.EVAL_PERIOD", "0",
            # methods evaluated at other weights than they train recompute BatchNorm statistics
            # before evaluations and checkpoints: a few batches are enough at test size
            "TEST.PRECISE_BN.NUM_ITER", "2",
            "LOG_PERIOD", "2",
            "DETERMINISTIC", "True",
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
    )
