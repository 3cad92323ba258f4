"""ZenithTrainer: detectron2's DefaultTrainer with SOLVER.OPTIMIZER, ZENITH's metrics and the budget."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm

from ..solver import lr_multiplier_source
from .hooks import BudgetExhausted, WallClockBudget, ZenithMetricsHook
from .solver import build_optimizer

__all__ = ["ZenithTrainer"]

# Under detectron2's logger, which setup_logger() (DefaultTrainer, default_setup) sends to the
# console and OUTPUT_DIR/log.txt; shown as "d2.zenith.trainer".
logger = logging.getLogger("detectron2.zenith.trainer")


def _solver(cfg, key, default):
    return cfg.SOLVER.get(key, default)


class ZenithTrainer(DefaultTrainer):
    """DefaultTrainer that

    * builds the optimizer named by SOLVER.OPTIMIZER (``zenith_det.detectron2.build_optimizer``;
      no ``register()`` needed),
    * logs ZENITH's multiplier and gradient norm (``ZenithMetricsHook``, every
      SOLVER.ZENITH.LOG_PERIOD iterations),
    * ends within SOLVER.MAX_TIME_HOURS of wall clock, counted across resumes,
      final checkpoint and evaluation included (``WallClockBudget``),
    * evaluates datasets whose metadata says evaluator_type "coco" with
      detectron2's COCOEvaluator.

    The config needs ``add_zenith_config``'s keys; without them it trains as
    DefaultTrainer would (SGD, no budget).
    """

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
        if evaluator_type != "coco":
            raise NotImplementedError(
                f"ZenithTrainer evaluates COCO-format datasets only; {dataset_name} has evaluator_type "
                f"{evaluator_type!r}. Override build_evaluator for it (see detectron2's tools/train_net.py)"
            )
        return COCOEvaluator(
            dataset_name,
            output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"),
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
        )

    def build_hooks(self):
        hooks = super().build_hooks()
        cfg = self.cfg
        self.budget = WallClockBudget(_solver(cfg, "MAX_TIME_HOURS", 0.0) * 3600)
        zenith_cfg = cfg.SOLVER.get("ZENITH", None)
        period = zenith_cfg.get("LOG_PERIOD", 20) if zenith_cfg is not None else 20
        metrics = ZenithMetricsHook(period)
        writer_at = next((i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.PeriodicWriter)), len(hooks))
        hooks.insert(writer_at, metrics)
        # First: it must decide before the checkpointer and EvalHook run (see WallClockBudget).
        return [self.budget] + hooks

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        source = lr_multiplier_source(self.optimizer)
        if resume and source is not None and self.checkpointer.has_checkpoint():
            history = self.optimizer.state_dict()["zenith_history"]
            logger.info(
                "ZENITH state restored: window=%d steps=%d Z=%r multiplier=%r (resuming at iteration %d, "
                "%.3f h of wall clock spent before)",
                int(history["window"]), int(history["count"]), float(history["zenith"]), float(history["mult"]),
                self.start_iter, self.budget.spent_before / 3600,
            )

    def train(self):
        """Train; returns the last evaluation results (also when the budget ended training)."""
        try:
            super().train()
        except BudgetExhausted as stop:
            logger.info("%s", stop)
            if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
                verify_results(self.cfg, self._last_eval_results)
        return getattr(self, "_last_eval_results", None)
