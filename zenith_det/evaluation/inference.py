"""Run a model over a test loader and feed an evaluator, as detectron2's inference_on_dataset."""
import contextlib
import datetime
import logging
import time
from collections import OrderedDict

import torch

from ..utils import comm

logger = logging.getLogger(__name__)

# The first batches pay for cudnn autotuning and allocator growth; leaving them
# out of the throughput gives the steady-state speed.
_NUM_WARMUP = 5
_LOG_EVERY_S = 30.0


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    # CUDA runs asynchronously: without this the model time would be launch time.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def masks_left_to_evaluator(model: torch.nn.Module, evaluator):
    """While inside, a model transform with `paste_masks` (TrainTestResize) leaves its masks
    unpasted ("mask_probs") if the evaluator says it pastes them (`pastes_masks`): it then
    pastes only inside the boxes, instead of the model filling whole images."""
    transforms = []
    if getattr(evaluator, "pastes_masks", False):
        transforms = [m for m in model.modules() if getattr(m, "paste_masks", None) is True]
    for m in transforms:
        m.paste_masks = False
    try:
        yield
    finally:
        for m in transforms:
            m.paste_masks = True


def inference_on_dataset(model: torch.nn.Module, data_loader, evaluator):
    """Run `model` on every batch of `data_loader` and return `evaluator.evaluate()`.

    Batches are (images, targets) with targets[i]["image_id"]; images go to the
    model's device. The model is put in eval mode and restored to its previous
    mode afterwards. With evaluator None only the throughput is measured and {}
    returned. In distributed runs each rank runs its share; only rank 0 gets
    non-empty results.
    """
    device = _model_device(model)
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    logger.info("start inference on %s batches", total if total is not None else "?")
    if evaluator is not None:
        evaluator.reset()

    was_training = model.training
    model.eval()
    num_images = timed_images = 0
    model_time = 0.0
    start = last_log = time.perf_counter()
    timed_start = None
    try:
        with torch.inference_mode(), masks_left_to_evaluator(model, evaluator):
            for idx, (images, targets) in enumerate(data_loader):
                if idx == _NUM_WARMUP:
                    timed_start, model_time, timed_images = time.perf_counter(), 0.0, 0
                images = [img.to(device, non_blocking=True) for img in images]
                t0 = time.perf_counter()
                outputs = model(images)
                _sync(device)
                model_time += time.perf_counter() - t0
                if evaluator is not None:
                    evaluator.process([t["image_id"] for t in targets], outputs)
                num_images += len(images)
                timed_images += len(images)
                now = time.perf_counter()
                if now - last_log > _LOG_EVERY_S:
                    last_log = now
                    logger.info("inference: %d/%s batches, %d images, %.1fs", idx + 1, total or "?", num_images, now - start)
    finally:
        model.train(was_training)

    elapsed = time.perf_counter() - start
    steady = time.perf_counter() - timed_start if timed_start is not None else elapsed
    world = comm.get_world_size()
    logger.info(
        "inference done on %d images in %s: %.2f images/s per process (%d processes), model alone %.2f images/s%s",
        num_images,
        datetime.timedelta(seconds=int(elapsed)),
        timed_images / max(steady, 1e-9),
        world,
        timed_images / max(model_time, 1e-9),
        "" if timed_start is not None else " (too few batches to skip warm-up)",
    )
    if evaluator is None:
        return OrderedDict()
    results = evaluator.evaluate()
    # detectron2's convention: non-main ranks get an empty dict, never None.
    return results if results is not None else OrderedDict()
