"""The standard training job: everything built from one config.

    cfg = load_config("configs/synthetic/mask_rcnn_zenith.yaml")
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
"""
import logging
import os
import random
import sys
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import CfgNode
from ..data import build_detection_test_loader, build_detection_train_loader, metadata_from_cfg
from ..errors import UserError
from ..evaluation import build_coco_evaluator, inference_on_dataset
from ..modeling import build_model
from ..solver import build_gradient_clipper, build_lr_scheduler, build_optimizer
from ..utils import comm
from ..utils.logger import setup_logger
from . import hooks
from .checkpoint import AtomicCheckpointer, atomic_write_bytes
from .train_loop import SimpleTrainer
from .writers import CommonMetricPrinter, JSONWriter, TensorboardWriter

logger = logging.getLogger(__name__)

# Exit code of a run stopped by SIGTERM/SIGINT after writing its checkpoint: EX_TEMPFAIL,
# "try again" -- requeue it with --resume.
PREEMPTED_EXIT_CODE = 75


def resolve_device(cfg) -> torch.device:
    name = cfg.MODEL.DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is visible; set MODEL.DEVICE cpu")
        if comm.get_world_size() > 1:
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def seed_all_rng(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_setup(cfg: CfgNode, resume: bool) -> None:
    """Output folder, logging, the merged config on disk, seeds, determinism.

    Refuses to start a new run over an earlier one in OUTPUT_DIR (that would
    overwrite its checkpoints and mix its metrics): continue it with --resume or
    choose another OUTPUT_DIR.
    """
    out = cfg.OUTPUT_DIR
    if comm.is_main_process():
        try:
            os.makedirs(out, exist_ok=True)
            probe = os.path.join(out, f".write_test.{os.getpid()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            raise UserError(f"OUTPUT_DIR {out} is not writable ({e.strerror}); choose another OUTPUT_DIR") from e
        if not resume and os.path.exists(os.path.join(out, "last_checkpoint")):
            raise UserError(
                f"OUTPUT_DIR {out} holds an earlier run (last_checkpoint); add --resume to continue it, "
                "or set OUTPUT_DIR to a new folder"
            )
    comm.synchronize()
    setup_logger(out if comm.is_main_process() else None, rank=comm.get_rank())
    if cfg.SEED < 0:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = int.from_bytes(os.urandom(3), "little")
        if was_frozen:
            cfg.freeze()
    logger.info("Command line: %s", " ".join(sys.argv))
    seed_all_rng(cfg.SEED + comm.get_rank())
    if cfg.DETERMINISTIC:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def evaluate(cfg: CfgNode, model: torch.nn.Module) -> "OrderedDict[str, dict]":
    """COCO metrics of `model` on each of DATASETS.TEST: {dataset: {"bbox": {...}, ...}}.

    With one test dataset the dataset level is dropped ({"bbox": {...}, ...}).
    Results files go to OUTPUT_DIR/inference[/<dataset>].
    """
    results = OrderedDict()
    for name in cfg.DATASETS.TEST:
        from ..data import get_dataset_metadata

        out_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name if len(cfg.DATASETS.TEST) > 1 else "")
        evaluator = build_coco_evaluator(cfg, get_dataset_metadata(name, cfg), output_dir=out_dir)
        results[name] = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
    if len(results) == 1:
        return next(iter(results.values()))
    return results


class _RunState:
    """What a resume needs besides model and optimizer: RNG states, AMP scaler, hook states."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def state_dict(self) -> dict:
        t = self.trainer
        state = {
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "hooks": {type(h).__name__: h.state_dict() for h in t.hooks if h.state_dict()},
        }
        if t.grad_scaler is not None:
            state["grad_scaler"] = t.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        t = self.trainer
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        for h in t.hooks:
            if type(h).__name__ in state["hooks"]:
                h.load_state_dict(state["hooks"][type(h).__name__])
        if t.grad_scaler is not None and "grad_scaler" in state:
            t.grad_scaler.load_state_dict(state["grad_scaler"])


class Trainer(SimpleTrainer):
    """Builds model, optimizer, schedule, checkpointer and hooks from `cfg`."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        device = resolve_device(cfg)
        self.metadata = metadata_from_cfg(cfg)
        model = build_model(cfg, self.metadata).to(device)
        optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, optimizer)
        if comm.get_world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            # Buffers (BN statistics) stay per process, as in detectron2.
            model = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        amp = cfg.SOLVER.AMP
        amp_dtype = None
        if amp.ENABLED:
            if amp.DTYPE not in ("float16", "bfloat16"):
                raise UserError(f"SOLVER.AMP.DTYPE: {amp.DTYPE!r} is not float16 or bfloat16")
            amp_dtype = getattr(torch, amp.DTYPE)
        super().__init__(
            model,
            None,  # built in train(), once the resume point is known
            optimizer,
            amp_dtype=amp_dtype,
            grad_clipper=build_gradient_clipper(cfg),
            max_nonfinite=cfg.SOLVER.MAX_NONFINITE_STEPS,
            grad_norm_period=cfg.LOG_PERIOD,
        )
        self.checkpointer = AtomicCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            save_to_disk=comm.is_main_process(),
            optimizer=optimizer,
            run_state=_RunState(self),
        )
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        cfg = self.cfg
        timer = hooks.IterationTimer()
        eval_hook = hooks.EvalHook(
            cfg.TEST.EVAL_PERIOD, cfg.TEST.EVAL_PERIOD_MINUTES, lambda: evaluate(self.cfg, self.model)
        ) if cfg.DATASETS.TEST else None
        budget = hooks.WallClockBudget(cfg.SOLVER.MAX_TIME_HOURS * 3600, timer, eval_hook)
        self.budget = budget
        self.preemption = hooks.PreemptionHandler()
        writers = []
        if comm.is_main_process():
            writers = [
                CommonMetricPrinter(cfg.SOLVER.MAX_ITER, budget),
                JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")),
                TensorboardWriter(cfg.OUTPUT_DIR),
            ]
        return [
            timer,
            hooks.LRScheduler(self.optimizer, self.scheduler, cfg.LOG_PERIOD),
            budget,
            self.preemption,
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_TO_KEEP, budget),
            eval_hook,
            hooks.PeriodicWriter(writers, cfg.LOG_PERIOD) if writers else None,
        ]

    def resume_or_load(self, resume: bool = True) -> None:
        """With `resume`, continue from the newest good checkpoint in OUTPUT_DIR (model,
        optimizer with ZENITH's history, schedule, iteration, budget spent, RNG states).
        Without it, start at iteration 0 from MODEL.WEIGHTS (already loaded by build_model)."""
        self.start_iter = 0
        if not resume:
            return
        checkpoint = self.checkpointer.load_latest_good()
        if checkpoint is None:
            logger.info("--resume: no checkpoint in %s yet; starting from scratch", self.cfg.OUTPUT_DIR)
            return
        self.start_iter = int(checkpoint.get("iteration", 0))
        self.last_good_checkpoint = checkpoint["path"]
        # The schedule is a pure function of the iteration, so it is rebuilt rather than saved.
        self.scheduler.last_epoch = self.start_iter - 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()

    def train(self):
        if self.data_loader is None:
            self.data_loader = build_detection_train_loader(self.cfg, start_iter=self.start_iter)
        # Only now, with the data and any resume checked: a refused run must not
        # overwrite the config of the run it refused to touch.
        if comm.is_main_process():
            path = os.path.join(self.cfg.OUTPUT_DIR, "config.yaml")
            atomic_write_bytes(path, lambda f: f.write(self.cfg.dump().encode()))
            logger.info("Full config saved to %s (SEED=%d)", path, self.cfg.SEED)
        super().train(self.start_iter, self.cfg.SOLVER.MAX_ITER)
        return getattr(self._eval_hook(), "latest_results", None)

    def _eval_hook(self):
        return next((h for h in self.hooks if isinstance(h, hooks.EvalHook)), None)
