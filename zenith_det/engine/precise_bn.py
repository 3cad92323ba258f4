"""BatchNorm statistics recomputed at the weights about to be evaluated (detectron2's PreciseBN).

Running statistics are gathered while the weights move, and for methods that
evaluate other weights than they train (schedule-free's averaged point) they
belong to the wrong weights altogether. fvcore's `update_bn_stats` recomputes the
true average over fixed weights; this module feeds it training batches.
"""
import contextlib
import itertools
import warnings

import torch

from ..utils.rng import rng_state, set_rng_state


def _fvcore_precise_bn():
    """fvcore.nn.precise_bn, imported when first needed: importing fvcore.nn scripts functions
    with torch.jit, whose deprecation warning would otherwise greet every command at start."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from fvcore.nn import precise_bn
    return precise_bn


class _TrainingForward(torch.nn.Module):
    """model(images, targets) on one (images, targets) batch: a detection model needs its
    targets in training mode, where BatchNorm uses (and records) the batch statistics."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, batch):
        images, targets = batch
        images = [img.to(self.device) for img in images]
        targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        return self.model(images, targets)


def recompute_bn_stats(model: torch.nn.Module, batches, num_batches: int) -> int:
    """Replace `model`'s BatchNorm running statistics by their average over `num_batches`
    batches of `batches` (an iterable of (images, targets)); returns the batches used.

    The model's weights, its training/eval mode and the global RNG (the heads sample
    proposals in training mode) are left as they were, so a run that recomputes the
    statistics draws the same training stream as one that does not.
    """
    precise_bn = _fvcore_precise_bn()
    model = model.module if hasattr(model, "module") else model  # DDP: each rank its own, as in training
    was_training = model.training
    model.train()
    bn_layers = precise_bn.get_bn_modules(model)  # those in training mode, hence after model.train()
    if not bn_layers:
        model.train(was_training)
        return 0
    saved = rng_state()
    # num_batches_tracked counts training batches; these forwards are not training
    counters = [(m, m.num_batches_tracked.clone()) for m in bn_layers if m.num_batches_tracked is not None]
    before = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in bn_layers]
    try:
        device = next(model.parameters()).device
        with _hooks_removed_whatever_happens(bn_layers):
            precise_bn.update_bn_stats(_TrainingForward(model, device), itertools.islice(batches, num_batches), num_batches)
    except BaseException:
        # Stopped part-way (a stop signal raises inside a forward): fvcore restores the
        # momentum and sets the statistics only when it completes, so put back what was there.
        for m, momentum, mean, var in before:
            m.momentum = momentum
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        raise
    finally:
        set_rng_state(saved)
        for m, count in counters:
            m.num_batches_tracked.copy_(count)
        model.train(was_training)
    return num_batches


@contextlib.contextmanager
def _hooks_removed_whatever_happens(bn_layers):
    """fvcore's update_bn_stats removes the forward pre-hooks it puts on each BatchNorm
    layer only when it completes. Left behind by a stop part-way, they fail the next
    forward ("Some BN layers are reused"): the final checkpoint's own recomputation, say.
    The handles are kept as fvcore makes them (each layer's register_forward_pre_hook,
    wrapped for the call) and removed on the way out, whatever happens."""
    handles = []

    def keeping(register):
        def register_and_keep(*args, **kwargs):
            handle = register(*args, **kwargs)
            handles.append(handle)
            return handle
        return register_and_keep

    for m in bn_layers:
        m.register_forward_pre_hook = keeping(m.register_forward_pre_hook)
    try:
        yield
    finally:
        for m in bn_layers:
            del m.register_forward_pre_hook  # the class's method again
        for handle in handles:
            handle.remove()  # a second removal of one fvcore removed is harmless
