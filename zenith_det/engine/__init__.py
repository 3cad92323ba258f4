"""Training engine: a small hook-based trainer in detectron2's style."""
from .checkpoint import AtomicCheckpointer
from .defaults import (
    Trainer,
    build_model_for_evaluation,
    evaluate,
    inference_dir,
    resolve_device,
    test_category_maps,
)
from .setup import default_setup
from .events import EventStorage, get_event_storage
from .hooks import (
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PreemptionHandler,
    WallClockBudget,
)
from .launch import launch
from .preemption import PREEMPTED_EXIT_CODE, Preempted, preemption_signals
from .train_loop import HookBase, SimpleTrainer, TrainerBase
from .visualize_hook import VisualizePredictions
