"""VisualizePredictions: after each evaluation, a few fixed test images with the model's predictions
go to TensorBoard (TEST.VIS_IMAGES; 0 turns it off).

A hook of its own, registered after EvalHook: it notices an evaluation by the
"eval_seconds" EvalHook puts into the event storage (storage.count, no host sync)
and writes nothing into another hook. On the main process only, it runs the
weights just evaluated (`trainer.evaluation_model()`, DDP unwrapped) in eval mode
on the first TEST.VIS_IMAGES images of the first DATASETS.TEST dataset and adds
each as "predictions/<dataset>/<image file>" (ground truth | predictions at score
>= score_threshold) to an event file in OUTPUT_DIR, at step = iterations done.
The model's train/eval mode is restored; no random state is drawn. The time the
pictures took goes to the trainer's budget clock (`picture_seconds`), which keeps that
much for the pictures after the final evaluation.
"""
import logging

import torch
from torch.nn.parallel import DistributedDataParallel

from ..utils import comm
from ..utils.fileio import write_error
from .train_loop import HookBase

logger = logging.getLogger(__name__)

# The key EvalHook records once per evaluation it completes.
EVAL_MARKER = "eval_seconds"


class VisualizePredictions(HookBase):
    def __init__(self, num_images=None, score_threshold: float = 0.5):
        """`num_images` None: the trainer config's TEST.VIS_IMAGES, read at each evaluation (a resume may change it)."""
        self.num_images = num_images
        self.score_threshold = score_threshold
        self._evaluations_seen = 0
        self._writer = None

    def after_step(self):
        self._after_evaluation()

    def after_train(self):
        try:
            self._after_evaluation()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _after_evaluation(self):
        count = self.trainer.storage.count(EVAL_MARKER)
        if count == self._evaluations_seen:
            return
        self._evaluations_seen = count
        cfg = self.trainer.cfg
        num = cfg.TEST.VIS_IMAGES if self.num_images is None else self.num_images
        if num <= 0 or not cfg.DATASETS.TEST or not comm.is_main_process():
            return
        step = self.trainer.completed_iters
        clock = getattr(self.trainer, "clock", None)
        start = clock.now() if clock is not None else None
        try:
            pictures = self._draw(cfg, num)
        except Exception as e:  # a picture is not worth the run: say so and train on
            logger.warning("No pictures of predictions at iteration %d: %s: %s", step, type(e).__name__, e)
            return
        self._write(cfg.OUTPUT_DIR, pictures, step)
        if clock is not None:  # the wall-clock budget keeps this much for the pictures after the final evaluation
            clock.picture_seconds = clock.now() - start

    def _draw(self, cfg, num):
        from ..data import get_detection_dataset
        from ..data.categories import test_category_maps
        from ..evaluation import instances_to_coco_json
        from ..visualization import draw_instances, image_name, load_ground_truth, results_to_instances, side_by_side

        name = cfg.DATASETS.TEST[0]
        _, label_to_category_id = test_category_maps(cfg)[name]
        dataset = get_detection_dataset(name, cfg, is_train=False)
        model = self.trainer.evaluation_model() if hasattr(self.trainer, "evaluation_model") else self.trainer.model
        if isinstance(model, DistributedDataParallel):
            model = model.module  # this process alone runs it: no collective calls
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        pictures = []
        try:
            for index, image_id in enumerate(dataset.ids[:num]):
                image, gt = load_ground_truth(dataset, index)
                with torch.inference_mode():
                    output = model([image.to(device, torch.float32).div_(255)])[0]
                results = instances_to_coco_json(output, image_id, label_to_category_id)
                predicted = results_to_instances(results, dataset.metadata, *image.shape[1:])
                picture = side_by_side(draw_instances(image, gt, dataset.metadata),
                                       draw_instances(image, predicted, dataset.metadata,
                                                      score_threshold=self.score_threshold))
                pictures.append((f"predictions/{name}/{image_name(dataset, image_id)}", picture))
        finally:
            model.train(was_training)
        return pictures

    def _write(self, log_dir, pictures, step):
        from torch.utils.tensorboard import SummaryWriter

        from .writers import _quiet_tensorboard_write_errors

        try:
            if self._writer is None:
                _quiet_tensorboard_write_errors()
                self._writer = SummaryWriter(log_dir)
            for tag, picture in pictures:
                self._writer.add_image(tag, picture, step, dataformats="CHW")
            self._writer.flush()
        except OSError as e:  # raised here for a write that its background thread failed
            raise write_error(self._writer.get_logdir() + "/events.out.tfevents" if self._writer else log_dir, e) from e
        logger.info("%d pictures of predictions written to TensorBoard at iteration %d", len(pictures), step)
