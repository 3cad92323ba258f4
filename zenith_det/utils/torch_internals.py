"""Every private torch API zenith_det uses, each behind a capability check and a public fallback.

The private APIs are fast paths, never requirements. Each is probed once (per
device type, and dtype where kernels differ), the answer is cached, and when a
probe fails the public fallback gives the same result:

=====================  ==================================================  ===============================
capability             private API                                         public fallback
=====================  ==================================================  ===============================
fused_sgd              ``torch._fused_sgd_`` with a tensor lr, on the       ``sgd_public_``: torch.optim.SGD's
                       device types in ``torch.optim.optimizer.             update per tensor, skipped and
                       _get_fused_kernels_supported_devices()``             unscaled with masks (no sync)
foreach_norm           ``torch._foreach_norm``                              ``torch.linalg.vector_norm`` each
foreach_norm_dtype     ``torch._foreach_norm(..., dtype=)``                 ``vector_norm(..., dtype=)`` each
group_tensors          ``Optimizer._group_tensors_by_device_and_dtype``     grouping in Python
foreach_copy           ``torch._foreach_copy_``                             ``Tensor.copy_`` each
grad_scaler_scale      ``GradScaler._scale`` (read with no host sync)       ``GradScaler.get_scale()`` (syncs)
amp_scaling_protocol   ``optimizer._step_supports_amp_scaling``: the         not declared: GradScaler unscales
                       scaler hands ``grad_scale``/``found_inf`` to step()   and skips itself (one sync)
=====================  ==================================================  ===============================

One private torchvision op has no public fallback, and only the flatness probe uses it:
``roi_align_backward_op()`` returns ``torch.ops.torchvision._roi_align_backward``, the adjoint
of RoIAlign, from which race/exact_hvp.py builds a RoIAlign with double backward;
``roi_align_inputs()`` reads its boxes and output size as torchvision.ops.roi_align does
(torchvision's private ``ops._utils`` and torch's ``_pair``).

No probe reads a tensor's value, so none makes the host wait for the device.
``force_public(*names)`` turns fast paths off (all of them with no names), for
tests and for ruling a kernel out when chasing a numerical difference.
"""
import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

__all__ = [
    "CAPABILITIES",
    "amp_step_args",
    "roi_align_backward_op",
    "roi_align_inputs",
    "capabilities",
    "clear_cache",
    "declare_amp_scaling",
    "force_public",
    "foreach_copy_",
    "foreach_norm",
    "foreach_norm_accepts_dtype",
    "fused_sgd_",
    "grad_scaler_scale",
    "group_tensors_by_device_and_dtype",
    "has_amp_scaling_protocol",
    "has_foreach_copy",
    "has_foreach_norm",
    "has_fused_sgd",
    "has_grad_scaler_scale",
    "has_group_tensors",
    "sgd_public_",
]

CAPABILITIES = (
    "fused_sgd",
    "foreach_norm",
    "foreach_norm_dtype",
    "group_tensors",
    "foreach_copy",
    "grad_scaler_scale",
    "amp_scaling_protocol",
)

# Probe results: name -> bool, or (name, device type, dtype) -> bool.
_cache: Dict[object, bool] = {}
# Capabilities turned off by force_public().
_forced: set = set()
# Fallbacks already announced in the log.
_warned: set = set()
# A probe that raises one of these says "not available"; anything else is a bug to surface.
_PROBE_ERRORS = (RuntimeError, TypeError, NotImplementedError, AttributeError, ValueError, AssertionError)


def clear_cache() -> None:
    """Forget every probe result (the next use probes again)."""
    _cache.clear()
    _warned.clear()


@contextlib.contextmanager
def force_public(*names: str) -> Iterator[None]:
    """Use the public fallbacks for `names` (every capability when none is given) inside the block."""
    unknown = [n for n in names if n not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown torch capability {unknown}; known: {', '.join(CAPABILITIES)}")
    added = set(names or CAPABILITIES) - _forced
    _forced.update(added)
    try:
        yield
    finally:
        _forced.difference_update(added)


def _cached(key, name: str, probe) -> bool:
    if name in _forced:
        return False
    if key not in _cache:
        try:
            _cache[key] = bool(probe())
        except _PROBE_ERRORS as e:
            logger.debug("torch capability %s unavailable: %s", key, e)
            _cache[key] = False
    return _cache[key]


def _device_type(device) -> str:
    return torch.device(device).type


# ---------------------------------------------------------------- fused SGD --

def has_fused_sgd(device, dtype: torch.dtype = torch.float32) -> bool:
    """Does ``torch._fused_sgd_`` exist, list `device`'s type as fused-capable, and take a tensor lr there?"""
    device = torch.device(device)
    key = ("fused_sgd", device.type, dtype)
    available = _cached(key, "fused_sgd", lambda: _probe_fused_sgd(device, dtype))
    if not available and "fused_sgd" not in _forced and key not in _warned:
        _warned.add(key)
        logger.warning(
            "ZENITH: torch %s has no fused SGD kernel taking a tensor lr for %s/%s; using the public "
            "per-tensor update (same result and guarantees, more kernel launches)",
            torch.__version__, device.type, str(dtype).replace("torch.", ""),
        )
    return available


def _probe_fused_sgd(device: torch.device, dtype: torch.dtype) -> bool:
    kernel = getattr(torch, "_fused_sgd_", None)
    if kernel is None:
        return False
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:
        pass  # the helper moved or went: the trial call below decides
    else:
        if device.type not in _get_fused_kernels_supported_devices():
            return False
    # Both forms Zenith calls (with and without momentum buffers), with every tensor
    # argument it passes, on scratch tensors of this device and dtype. Values are not
    # read back (that would sync): an unsupported form raises at dispatch.
    param = torch.zeros(4, device=device, dtype=dtype)
    grad = torch.ones_like(param)
    buf = torch.zeros_like(param)
    scalar = dict(device=device, dtype=torch.float32)
    common = dict(
        weight_decay=0.5, lr=torch.ones((), **scalar), dampening=0.0, nesterov=False, maximize=False,
        grad_scale=torch.ones((), **scalar), found_inf=torch.zeros((), **scalar),
    )
    kernel([param], [grad], [buf], momentum=0.5, is_first_step=True, **common)
    kernel([param], [grad], [], momentum=0.0, is_first_step=False, **common)
    return True


def fused_sgd_(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    momentum_buffers: List[torch.Tensor],
    *,
    weight_decay: float,
    momentum: float,
    lr: torch.Tensor,
    dampening: float,
    nesterov: bool,
    is_first_step: bool,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> None:
    """One torch.optim.SGD step on tensors of one device and dtype, with a 0-dim tensor `lr`.

    `momentum_buffers` is empty when `momentum == 0`. `grad_scale`: divide the grads
    by it first (they are written back unscaled, as GradScaler.unscale_ would).
    `found_inf`: a 0-dim float, nonzero to leave params, buffers and grads untouched.
    ``torch._fused_sgd_`` where `has_fused_sgd`, else `sgd_public_`; neither syncs.
    """
    if not params:
        return
    device = params[0].device
    kwargs = dict(
        weight_decay=weight_decay, momentum=momentum, lr=lr.to(device, non_blocking=True), dampening=dampening,
        nesterov=nesterov, is_first_step=is_first_step,
        grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
        found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True),
    )
    if has_fused_sgd(device, params[0].dtype):
        torch._fused_sgd_(params, grads, momentum_buffers if momentum != 0 else [], maximize=False, **kwargs)
    else:
        sgd_public_(params, grads, momentum_buffers, **kwargs)


def sgd_public_(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    momentum_buffers: List[torch.Tensor],
    *,
    weight_decay: float,
    momentum: float,
    lr: torch.Tensor,
    dampening: float,
    nesterov: bool,
    is_first_step: bool,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
) -> None:
    """`fused_sgd_`'s contract with public ops only: torch.optim.SGD's arithmetic per tensor.

    The skip is a mask (``torch.where``), never a Python branch on a tensor, so the
    host never waits for the device; a skipped step leaves every tensor bit-identical.
    """
    if not params:
        return
    device = params[0].device
    lr = lr.to(device, non_blocking=True)
    skip = None if found_inf is None else found_inf.to(device, non_blocking=True) != 0
    scale = None if grad_scale is None else grad_scale.to(device, non_blocking=True)

    def keep_unless_skipped(old: torch.Tensor, new: torch.Tensor) -> None:
        old.copy_(new if skip is None else torch.where(skip, old, new))

    for i, (param, grad) in enumerate(zip(params, grads)):
        if scale is not None:
            unscaled = grad / scale
            keep_unless_skipped(grad, unscaled)
            grad = unscaled
        d_p = grad if weight_decay == 0 else grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            new_buf = d_p if is_first_step else buf.mul(momentum).add_(d_p, alpha=1 - dampening)
            keep_unless_skipped(buf, new_buf)
            d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
        keep_unless_skipped(param, param - lr * d_p)


# ------------------------------------------------------------- foreach norm --

def has_foreach_norm() -> bool:
    """Does ``torch._foreach_norm(tensors, 2.0)`` work?"""
    return _cached("foreach_norm", "foreach_norm", _probe_foreach_norm)


def _probe_foreach_norm() -> bool:
    out = torch._foreach_norm([torch.ones(3), torch.ones(2, dtype=torch.float64)], 2.0)
    return len(out) == 2 and out[0].dim() == 0


def foreach_norm_accepts_dtype(device) -> bool:
    """Does ``torch._foreach_norm(..., dtype=torch.float32)`` take bf16/fp16 tensors on `device`'s type?"""
    device = torch.device(device)
    if not has_foreach_norm():
        return False
    return _cached(("foreach_norm_dtype", device.type), "foreach_norm_dtype", lambda: _probe_norm_dtype(device))


def _probe_norm_dtype(device: torch.device) -> bool:
    low = [torch.ones(3, device=device, dtype=dt) for dt in (torch.bfloat16, torch.float16)]
    out = torch._foreach_norm(low, 2.0, dtype=torch.float32)
    return len(out) == 2 and all(n.dtype == torch.float32 for n in out)


def foreach_norm(tensors: Sequence[torch.Tensor], dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
    """The L2 norm of each tensor (all on one device), accumulated in `dtype` when given."""
    tensors = list(tensors)
    if not tensors:
        return []
    if dtype is None:
        if has_foreach_norm():
            return list(torch._foreach_norm(tensors, 2.0))
    elif foreach_norm_accepts_dtype(tensors[0].device):
        return list(torch._foreach_norm(tensors, 2.0, dtype=dtype))
    return [torch.linalg.vector_norm(t, 2.0, dtype=dtype) for t in tensors]


# ------------------------------------------------------------ grouping, copy --

def has_group_tensors() -> bool:
    """Does ``Optimizer._group_tensors_by_device_and_dtype`` exist and return {(device, dtype): (lists, _)}?"""
    return _cached("group_tensors", "group_tensors", _probe_group_tensors)


def _probe_group_tensors() -> bool:
    a, b = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    a2 = torch.zeros(1)
    grouped = Optimizer._group_tensors_by_device_and_dtype([[a, b], [a2, None]])
    expected = {(a.device, torch.float32): (a, a2), (b.device, torch.float64): (b, None)}
    if set(grouped) != set(expected):
        return False
    for key, (first, second) in expected.items():
        lists = grouped[key][0]
        if len(lists) != 2 or len(lists[0]) != 1 or lists[0][0] is not first or lists[1][0] is not second:
            return False
    return True


def group_tensors_by_device_and_dtype(
    tensorlistlist: List[List[Optional[torch.Tensor]]],
) -> Dict[Tuple[torch.device, torch.dtype], List[List[Optional[torch.Tensor]]]]:
    """Split parallel lists by the (device, dtype) of the first list's tensors, keeping order.

    Later lists may hold None (a missing momentum buffer, say).
    """
    if has_group_tensors():
        grouped = Optimizer._group_tensors_by_device_and_dtype(tensorlistlist)
        # While torch.compile traces, torch returns one group keyed (None, None): group here instead.
        if all(device is not None for device, _ in grouped):
            return {key: value[0] for key, value in grouped.items()}
    out: Dict[Tuple[torch.device, torch.dtype], List[List[Optional[torch.Tensor]]]] = {}
    for i, first in enumerate(tensorlistlist[0]):
        lists = out.setdefault((first.device, first.dtype), [[] for _ in tensorlistlist])
        for column, tensors in zip(lists, tensorlistlist):
            column.append(tensors[i])
    return out


def has_foreach_copy() -> bool:
    """Does ``torch._foreach_copy_(dst, src)`` work?"""
    return _cached("foreach_copy", "foreach_copy", _probe_foreach_copy)


def _probe_foreach_copy() -> bool:
    torch._foreach_copy_([torch.zeros(2), torch.zeros((), dtype=torch.int64)], [torch.ones(2), torch.ones((), dtype=torch.int64)])
    return True


def foreach_copy_(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """``dst[i].copy_(src[i])`` for every i, in one launch where torch can."""
    dst, src = list(dst), list(src)
    if len(dst) != len(src):
        raise ValueError(f"foreach_copy_: {len(dst)} destinations, {len(src)} sources")
    if not dst:
        return
    if has_foreach_copy():
        torch._foreach_copy_(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


# ---------------------------------------------------------------------- AMP --

def has_grad_scaler_scale() -> bool:
    """Does ``torch.amp.GradScaler`` keep its scale as a 0-dim tensor in ``_scale`` once it has scaled?"""
    return _cached("grad_scaler_scale", "grad_scaler_scale", _probe_grad_scaler_scale)


def _probe_grad_scaler_scale() -> bool:
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(torch.ones(()))
    scale = getattr(scaler, "_scale", None)
    return isinstance(scale, torch.Tensor) and scale.dim() == 0 and scale.is_floating_point()


def grad_scaler_scale(scaler) -> Optional[torch.Tensor]:
    """The loss scale of a GradScaler as a 0-dim tensor (None when it is off or absent).

    Read from the device without a sync where torch allows; otherwise through the
    public ``get_scale()``, which waits for the device once.
    """
    if scaler is None or not scaler.is_enabled():
        return None
    if has_grad_scaler_scale():
        scale = getattr(scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            return scale
    return torch.tensor(scaler.get_scale(), dtype=torch.float32)


def has_amp_scaling_protocol() -> bool:
    """Does GradScaler.step hand an optimizer that sets ``_step_supports_amp_scaling`` the tensors
    ``grad_scale`` and ``found_inf`` (instead of unscaling the grads itself)?"""
    return _cached("amp_scaling_protocol", "amp_scaling_protocol", _probe_amp_scaling_protocol)


def _probe_amp_scaling_protocol() -> bool:
    class _Probe(Optimizer):
        def __init__(self, params):
            super().__init__(params, {})
            self._step_supports_amp_scaling = True
            self.seen = None

        def step(self, closure=None):
            self.seen = amp_step_args(self)

    param = torch.nn.Parameter(torch.ones(1))
    opt = _Probe([param])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    with torch.enable_grad():
        scaler.scale(param.sum()).backward()
    scaler.step(opt)
    grad_scale, found_inf = opt.seen or (None, None)
    # Both handed over during step() and taken back after it.
    return (
        isinstance(grad_scale, torch.Tensor)
        and isinstance(found_inf, torch.Tensor)
        and getattr(opt, "grad_scale", None) is None
    )


def declare_amp_scaling(optimizer: Optimizer) -> bool:
    """Ask GradScaler to pass `grad_scale`/`found_inf` to `optimizer.step()` rather than unscale
    and skip with a host sync; True when this torch honours it (else nothing is set)."""
    if has_amp_scaling_protocol():
        optimizer._step_supports_amp_scaling = True
        return True
    return False


def amp_step_args(optimizer: Optimizer) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(grad_scale, found_inf) that GradScaler.step handed to `optimizer`, or (None, None)."""
    return getattr(optimizer, "grad_scale", None), getattr(optimizer, "found_inf", None)


# -------------------------------------------------------------- diagnostics --

def capabilities(device=None, dtype: torch.dtype = torch.float32) -> Dict[str, bool]:
    """Which fast paths this torch offers (on `device`, CPU by default): for logs and bug reports."""
    device = torch.device("cpu") if device is None else torch.device(device)
    return {
        "fused_sgd": has_fused_sgd(device, dtype),
        "foreach_norm": has_foreach_norm(),
        "foreach_norm_dtype": foreach_norm_accepts_dtype(device),
        "group_tensors": has_group_tensors(),
        "foreach_copy": has_foreach_copy(),
        "grad_scaler_scale": has_grad_scaler_scale(),
        "amp_scaling_protocol": has_amp_scaling_protocol(),
    }


def roi_align_backward_op():
    """torchvision's RoIAlign adjoint (``_roi_align_backward``: grad, rois, spatial_scale, pooled
    height and width, batch size, channels, height, width, sampling_ratio, aligned); a RuntimeError
    naming the torchvision version where the build lacks it."""
    import torchvision  # noqa: F401 (registers torch.ops.torchvision)

    try:
        return torch.ops.torchvision._roi_align_backward
    except (AttributeError, RuntimeError) as e:
        raise RuntimeError(f"torchvision {torchvision.__version__} has no _roi_align_backward op: exact "
                           "Hessian-vector products of RoIAlign models need it") from e


def roi_align_inputs(boxes, output_size):
    """(rois (K, 5), (pooled height, pooled width)) from torchvision.ops.roi_align's arguments, read
    by torchvision's own helpers: boxes as a (K, 5) tensor or a list of (N_i, 4) tensors."""
    from torch.nn.modules.utils import _pair
    from torchvision.ops._utils import check_roi_boxes_shape, convert_boxes_to_roi_format

    check_roi_boxes_shape(boxes)
    rois = boxes if isinstance(boxes, torch.Tensor) else convert_boxes_to_roi_format(boxes)
    return rois, _pair(output_size)
