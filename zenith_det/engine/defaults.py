"""The standard training job: everything built from one config.

    cfg = load_config("configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml")
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
"""
import logging
import os
import time
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import CfgNode
from ..data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_dataset_metadata,
    get_detection_dataset,
    metadata_from_cfg,
    training_data_identity,
)
from ..data.categories import test_category_maps
from ..errors import UserError
from ..evaluation import build_coco_evaluator, inference_on_dataset
from ..modeling import build_model
from ..modeling.meta import metadata_for_weights, metadata_of_checkpoint, model_meta
from ..solver import build_gradient_clipper, build_lr_scheduler, build_optimizer, optimizer_spec
from ..utils import comm
from ..utils.budget import BudgetClock
from ..utils.fileio import atomic_write_text
from ..utils.rng import rng_state, seed_all_rng, set_rng_state
from . import hooks
from .checkpoint import AtomicCheckpointer
from .precise_bn import recompute_bn_stats
from .preemption import preemption_signals
from .resume import check_same_training_data, resume_config, saved_config
from .setup import set_random_seed
from .train_loop import SimpleTrainer
from .visualize_hook import VisualizePredictions
from .writers import CommonMetricPrinter, JSONWriter, TensorboardWriter

logger = logging.getLogger(__name__)

def resolve_device(cfg) -> torch.device:
    name = cfg.MODEL.DEVICE
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"MODEL.DEVICE: {cfg.MODEL.DEVICE!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is visible; set MODEL.DEVICE cpu")
        if comm.get_world_size() > 1:
            return torch.device("cuda", torch.cuda.current_device())
    return device


def inference_dir(cfg: CfgNode, dataset_name: str) -> str:
    """Where the evaluation of `dataset_name` writes its results: OUTPUT_DIR/inference,
    with one subfolder per dataset when DATASETS.TEST names several."""
    return os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name if len(cfg.DATASETS.TEST) > 1 else "")


def evaluate(cfg: CfgNode, model: torch.nn.Module, model_metadata=None) -> "OrderedDict[str, dict]":
    """COCO metrics of `model` on each of DATASETS.TEST, as `Trainer.test` computes them."""
    return Trainer.test(cfg, model, model_metadata)


def build_model_for_evaluation(cfg: CfgNode, resume: bool):
    """(model, its label space) that `--eval-only` evaluates: MODEL.WEIGHTS, or with `resume`
    OUTPUT_DIR's newest good checkpoint. A checkpoint's own categories (its meta) are the label
    space, so its training json need not be there. Builds only the model (no optimizer, data
    loader or hooks), and refuses to evaluate a randomly initialised one."""
    if not resume and not cfg.MODEL.WEIGHTS:
        raise UserError(
            "--eval-only evaluates trained weights: add MODEL.WEIGHTS path/to/model.pth, "
            "or --resume to evaluate the newest checkpoint in OUTPUT_DIR"
        )
    if not resume:
        metadata = metadata_for_weights(cfg)
        return Trainer.build_model(cfg, metadata), metadata
    # The checkpoint is read before the model is built: its meta decides the model's classes.
    state = AtomicCheckpointer(None, cfg.OUTPUT_DIR, save_to_disk=False).read_latest_good()
    if state is None:
        raise UserError(
            f"--eval-only --resume: OUTPUT_DIR {cfg.OUTPUT_DIR} holds no checkpoint; "
            "give MODEL.WEIGHTS, or the OUTPUT_DIR of a trained run"
        )
    metadata = metadata_of_checkpoint(state, cfg, state["path"])
    model = Trainer.build_model(cfg, metadata)
    AtomicCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=False).load_model(state["path"], state)
    logger.info("Evaluating %s (iteration %d)", state["path"], state["iteration"])
    if "averager" in state:  # a method evaluated at its iterate average (DoG): evaluate that
        model.load_state_dict(state["averager"]["av_model"])
        logger.info("Evaluating the iterate average the run kept (its averager's weights)")
    return model, metadata


class Trainer(SimpleTrainer):
    """Builds model, optimizer, schedule, loaders, evaluators, checkpointer and hooks from `cfg`.

    Extend it as detectron2's DefaultTrainer: override a `build_*` classmethod
    (`build_model`, `build_optimizer`, `build_lr_scheduler`, `build_train_loader`,
    `build_test_loader`, `build_evaluator`) or `build_hooks`, and the rest of the
    run uses yours (docs/training.md has an example).

    It owns the run's state: `state_dict()` gathers model, optimizer, scaler,
    iteration, budget clock, RNG, hook states, the config, the model's meta (categories,
    keypoints, input: modeling/meta.py) and the training data's identity, and the checkpointer saves what it hands over. `clock` (a time
    source) is injectable for tests.
    """

    def __init__(self, cfg: CfgNode, clock=time.perf_counter):
        self.cfg = cfg
        device = resolve_device(cfg)
        self.metadata = metadata_from_cfg(cfg)
        # What the checkpoints record of the training data, so a resume can refuse a changed json.
        self.data_identity = training_data_identity(cfg)
        model = self.build_model(cfg, self.metadata)
        optimizer = self.build_optimizer(cfg, model)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        if comm.get_world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            # Buffers (BN statistics) stay per process, as in detectron2 (broadcast_buffers is
            # the spelling every supported torch accepts; forward_sync_buffers came later).
            # Gradients as views into DDP's buckets: no second copy of them in memory.
            model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True)
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
            spec=optimizer_spec(cfg),
        )
        self.clock = BudgetClock(cfg.SOLVER.MAX_TIME_HOURS * 3600, clock=clock)
        self.signals = preemption_signals()
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process())
        self._bn_stats_at = None  # the iteration whose evaluation weights have their BatchNorm statistics
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ what users override

    @classmethod
    def build_model(cls, cfg: CfgNode, metadata) -> torch.nn.Module:
        """The model for a dataset's metadata (classes, keypoints), on MODEL.DEVICE, MODEL.WEIGHTS loaded."""
        return build_model(cfg, metadata).to(resolve_device(cfg))

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer, last_iter: int = -1):
        return build_lr_scheduler(cfg, optimizer, last_iter=last_iter)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, start_iter: int = 0):
        """Endless per-rank batches; started at `start_iter` it yields what a loader started at 0
        yields from its start_iter-th batch on (a resume continues the same stream)."""
        return build_detection_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, label_to_category_id=None):
        """The COCO evaluator of one test dataset; results go to inference_dir(cfg, dataset_name).
        `label_to_category_id`: the model's labels in this dataset's ids (test_category_maps)."""
        return build_coco_evaluator(cfg, get_dataset_metadata(dataset_name, cfg), output_dir=inference_dir(cfg, dataset_name),
                                    label_to_category_id=label_to_category_id)

    def build_hooks(self):
        cfg = self.cfg
        eval_hook = hooks.EvalHook(
            cfg.TEST.EVAL_PERIOD, cfg.TEST.EVAL_PERIOD_MINUTES, lambda model: self.test(self.cfg, model), self.signals,
        ) if cfg.DATASETS.TEST else None
        writers = []
        if comm.is_main_process():
            writers = [
                CommonMetricPrinter(cfg.SOLVER.MAX_ITER, self.clock),
                JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")),
                TensorboardWriter(cfg.OUTPUT_DIR),
            ]
        return [
            hooks.RunFolderGuard(cfg.OUTPUT_DIR),
            hooks.IterationTimer(),
            hooks.LRScheduler(cfg.LOG_PERIOD),
            hooks.WallClockBudget(),
            hooks.PreemptionHandler(self.signals),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_TO_KEEP),
            eval_hook,
            VisualizePredictions() if eval_hook is not None and comm.is_main_process() else None,
            hooks.PeriodicWriter(writers, cfg.LOG_PERIOD) if writers else None,
        ]

    # ------------------------------------------------------------------ evaluation

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, model_metadata=None) -> "OrderedDict[str, dict]":
        """COCO metrics of `model` on each of DATASETS.TEST: {dataset: {"bbox": {...}, ...}}.

        With one test dataset the dataset level is dropped ({"bbox": {...}, ...}).
        Every test dataset's categories are matched to the model's (test_category_maps)
        before the first inference, so a refused evaluation costs no time. `model_metadata`: the
        model's label space where it is not DATASETS.TRAIN's (a checkpoint's own).
        """
        results = OrderedDict()
        for name, (_, label_to_category_id) in test_category_maps(cfg, model_metadata).items():
            evaluator = cls.build_evaluator(cfg, name, label_to_category_id)
            results[name] = inference_on_dataset(model, cls.build_test_loader(cfg, name), evaluator)
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    def evaluation_model(self) -> torch.nn.Module:
        """The weights we evaluate and checkpoint (SimpleTrainer.evaluation_model), with their
        BatchNorm statistics recomputed where the method or TEST.PRECISE_BN asks: once per
        iteration, so a final checkpoint and the final evaluation share one recomputation."""
        model = super().evaluation_model()
        precise = self.cfg.TEST.PRECISE_BN
        if (precise.ENABLED or self.optimizer_spec.bn_stats_at_eval_weights) and self._bn_stats_at != self.completed_iters:
            # A loader of its own from iteration 0: the same batches every time, and the
            # training stream is not consumed.
            batches = self.build_train_loader(self.cfg, start_iter=0)
            used = recompute_bn_stats(model, batches, precise.NUM_ITER)
            self._bn_stats_at = self.completed_iters
            logger.info("BatchNorm statistics recomputed at the evaluation weights over %d batches", used)
        return model

    @property
    def preempted(self) -> bool:
        """A stop signal arrived at any point of the run (exit with PREEMPTED_EXIT_CODE)."""
        return self.signals.received is not None or self.stop_reason == "preempted"

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["budget"] = self.clock.state_dict()
        # Every rank's RNG (each draws its own proposals' samples): called on every rank, as the
        # checkpoint hook does, so that a resume with as many processes continues each rank's stream.
        # "rng" alone (rank 0's) is what a single process and older checkpoints have.
        states = comm.all_gather(rng_state())
        state["rng"] = states[0]
        if len(states) > 1:
            state["rng_ranks"] = states
        # YAML text: a plain string, and what `--resume` compares the new config with.
        state["config"] = self.cfg.dump()
        # What inference needs besides the config (categories, keypoints, input): the file describes itself.
        state["meta"] = model_meta(self.cfg, self.metadata)
        state["data"] = self.data_identity
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.clock.load_state_dict(state["budget"])
        ranks = state.get("rng_ranks") or []
        if len(ranks) == comm.get_world_size():
            set_rng_state(ranks[comm.get_rank()])
        else:  # a single process, or another number of processes than saved: rank 0's stream for every rank
            set_rng_state(state["rng"])
        # The schedule is a pure function of the iteration and the (current) config.
        self.scheduler = self.build_lr_scheduler(self.cfg, self.optimizer, last_iter=self.start_iter - 1)

    def resume_or_load(self, resume: bool = True) -> bool:
        """With `resume`, continue from the newest good checkpoint in OUTPUT_DIR; returns
        whether one was loaded. Without it, start at iteration 0 from MODEL.WEIGHTS
        (already loaded by build_model).

        The checkpoint's config decides what the run is: a change that would make
        it another run is refused (see resume.py); allowed changes are applied and
        logged, and `self.cfg` becomes the config the run continues with.
        """
        self.start_iter = 0
        if not resume:
            return False
        state = self.checkpointer.read_latest_good()
        if state is None:
            logger.info("--resume: no checkpoint in %s yet; starting from scratch", self.cfg.OUTPUT_DIR)
            if self.cfg.SEED < 0:
                set_random_seed(self.cfg)
                seed_all_rng(self.cfg.SEED + comm.get_rank())
            return False
        path = state.pop("path")
        if "config" in state:
            self.cfg, changes = resume_config(saved_config(state["config"], path), self.cfg, path)
            if changes:
                logger.info("Resuming with changed settings: %s", "; ".join(changes))
        check_same_training_data(state.get("data"), self.data_identity, path)
        self.checkpointer.load_model(path, state)
        self.load_state_dict(state)
        self.last_good_checkpoint = path
        logger.info("Resumed from %s at iteration %d", path, self.start_iter)
        return True

    def train(self):
        if self.data_loader is None:
            self.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
        if self.cfg.DATASETS.TEST:
            test_category_maps(self.cfg)  # test data the model cannot be scored on: refused now, not at the first evaluation
        # Only now, with the data and any resume checked: a refused run must not
        # overwrite the config of the run it refused to touch.
        if comm.is_main_process():
            path = os.path.join(self.cfg.OUTPUT_DIR, "config.yaml")
            atomic_write_text(self.cfg.dump(), path)
            logger.info("Full config saved to %s (SEED=%d)", path, self.cfg.SEED)
        self._size_evaluation_for_budget()
        installed_here = not self.signals.installed
        self.signals.install()
        try:
            super().train(self.start_iter, self.cfg.SOLVER.MAX_ITER)
        finally:
            if installed_here:
                self.signals.uninstall()
        return getattr(self._eval_hook(), "latest_results", None)

    def _size_evaluation_for_budget(self) -> None:
        """Tell the clock how big the final evaluation is, so the budget keeps time for it
        even before the first evaluation has been measured."""
        if not self.cfg.DATASETS.TEST or self.clock.max_seconds <= 0:
            return
        world = comm.get_world_size()
        images = sum(len(get_detection_dataset(name, self.cfg, is_train=False)) for name in self.cfg.DATASETS.TEST)
        self.clock.eval_images = -(-images // world)  # per process
        self.clock.train_images_per_step = max(self.cfg.SOLVER.IMS_PER_BATCH // world, 1)

    def _eval_hook(self):
        return next((h for h in self.hooks if isinstance(h, hooks.EvalHook)), None)
