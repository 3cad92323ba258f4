"""zenith_det.utils.torch_internals: each private torch API against its public fallback,
the capability probes (once, cached, no value read) and a torch without the fused kernel."""
import contextlib
import itertools
import logging

import pytest
import torch

from zenith_det import Zenith
from zenith_det.utils import torch_internals as ti


@pytest.fixture
def fresh_probes():
    """Probe again inside the test, and forget what was probed under its monkeypatches."""
    ti.clear_cache()
    yield
    ti.clear_cache()


def test_capabilities_report_every_api_and_the_long_standing_ones_are_there():
    caps = ti.capabilities()
    assert set(caps) == set(ti.CAPABILITIES)
    # Present in every torch of the supported range (setup.py), on CPU.
    for name in ("foreach_norm", "group_tensors", "foreach_copy", "grad_scaler_scale", "amp_scaling_protocol"):
        assert caps[name], name
    with ti.force_public():
        assert not any(ti.capabilities().values())
    assert ti.capabilities() == caps


def test_force_public_names_known_capabilities_and_nests():
    with pytest.raises(ValueError, match="fused_sgd"):
        with ti.force_public("fused_sdg"):
            pass
    with ti.force_public("foreach_copy"):
        with ti.force_public("foreach_copy", "foreach_norm"):
            assert not ti.has_foreach_norm()
        assert ti.has_foreach_norm() and not ti.has_foreach_copy()
    assert ti.has_foreach_copy()


def test_probes_run_once(monkeypatch, fresh_probes):
    calls = []
    real = ti._probe_fused_sgd
    monkeypatch.setattr(ti, "_probe_fused_sgd", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        ti.has_fused_sgd("cpu")
        ti.has_fused_sgd(torch.device("cpu"), torch.float64)
    assert len(calls) == 2  # one per (device type, dtype)


def test_a_torch_without_the_fused_kernel_falls_back(monkeypatch, fresh_probes, caplog):
    monkeypatch.delattr(torch, "_fused_sgd_")
    with caplog.at_level(logging.WARNING, logger="zenith_det"):
        assert not ti.has_fused_sgd("cpu")
        assert not ti.has_fused_sgd("cpu")
    assert sum("no fused SGD kernel" in r.getMessage() for r in caplog.records) == 1
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ref = torch.nn.Linear(3, 2)
    ref.load_state_dict(model.state_dict())
    opt = Zenith(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, window=3)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for t in range(5):
        for p, q in zip(model.parameters(), ref.parameters()):
            p.grad = torch.randn_like(p) * (t + 1)  # growing norms: the multiplier stays 1
            q.grad = p.grad.clone()
        opt.step()
        sgd.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_a_device_type_without_fused_kernels_falls_back(monkeypatch, fresh_probes):
    import torch.optim.optimizer as torch_optimizer

    monkeypatch.setattr(torch_optimizer, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    assert not ti.has_fused_sgd("cpu")


def test_a_kernel_rejecting_a_tensor_lr_falls_back(monkeypatch, fresh_probes):
    real = torch._fused_sgd_

    def float_lr_only(*args, lr, **kwargs):
        if isinstance(lr, torch.Tensor):
            raise RuntimeError("_fused_sgd_() received an invalid combination of arguments")
        return real(*args, lr=lr, **kwargs)

    monkeypatch.setattr(torch, "_fused_sgd_", float_lr_only)
    assert not ti.has_fused_sgd("cpu")


_SGD_CASES = [
    dict(weight_decay=wd, momentum=m, dampening=d, nesterov=n, is_first_step=first, scaled=scaled, skip=skip)
    for wd, (m, d, n), first, scaled, skip in itertools.product(
        (0.0, 1e-2),
        ((0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.0, True), (0.5, 0.3, False)),
        (False, True),
        (False, True),
        (False, True),
    )
    if not (first and m == 0)
]


@pytest.mark.parametrize("case", _SGD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_public_sgd_matches_the_fused_kernel(case):
    if not ti.has_fused_sgd("cpu"):
        pytest.skip(f"torch {torch.__version__} has no fused SGD kernel with a tensor lr on CPU")
    case = dict(case)
    scaled, skip = case.pop("scaled"), case.pop("skip")
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (7,), ()]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 8 for s in shapes]
    bufs = [torch.randn(s, generator=gen) for s in shapes] if case["momentum"] else []
    extra = dict(
        lr=torch.tensor(0.05),
        grad_scale=torch.tensor(8.0) if scaled else None,
        found_inf=torch.tensor(1.0 if skip else 0.0),
    )
    copy = lambda ts: [t.clone() for t in ts]
    fused = (copy(params), copy(grads), copy(bufs))
    public = (copy(params), copy(grads), copy(bufs))
    torch._fused_sgd_(*fused, maximize=False, **case, **extra)
    ti.sgd_public_(*public, **case, **extra)
    for name, f, p, before in zip(("params", "grads", "bufs"), fused, public, (params, grads, bufs)):
        for a, b, c in zip(p, f, before):
            if skip:
                assert torch.equal(a, c), name  # untouched, bit for bit
            torch.testing.assert_close(a, b, msg=name)


def test_public_sgd_never_syncs_and_skips_with_nonfinite_grads():
    from test_zenith import _host_syncs_forbidden

    params = [torch.ones(3), torch.ones(2)]
    grads = [torch.tensor([1.0, float("inf"), 2.0]), torch.tensor([float("nan"), 1.0])]
    bufs = [torch.zeros(3), torch.zeros(2)]
    before = [t.clone() for t in params + grads + bufs]
    with _host_syncs_forbidden():
        ti.sgd_public_(
            params, grads, bufs, weight_decay=0.1, momentum=0.9, lr=torch.tensor(0.1), dampening=0.0,
            nesterov=True, is_first_step=False, grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0),
        )
    for a, b in zip(params + grads + bufs, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_foreach_norm_matches_vector_norm(dtype):
    tensors = [torch.randn(17, dtype=torch.bfloat16), torch.randn(3, 4, dtype=torch.float16), torch.zeros(0, dtype=torch.bfloat16)]
    if dtype is None:
        tensors = [t.float() for t in tensors]
    fast = ti.foreach_norm(tensors, dtype=dtype)
    with ti.force_public("foreach_norm", "foreach_norm_dtype"):
        public = ti.foreach_norm(tensors, dtype=dtype)
    assert [n.dtype for n in fast] == [n.dtype for n in public]
    for a, b in zip(fast, public):
        torch.testing.assert_close(a, b)
    assert ti.foreach_norm([]) == []


def test_grouping_keeps_order_and_nones():
    a, b, c = torch.zeros(1), torch.zeros(2, dtype=torch.float64), torch.zeros(3)
    ga, gb, gc = torch.ones(1), torch.ones(2, dtype=torch.float64), torch.ones(3)
    lists = [[a, b, c], [ga, gb, gc], [None, torch.zeros(2, dtype=torch.float64), None]]
    fast = ti.group_tensors_by_device_and_dtype(lists)
    with ti.force_public("group_tensors"):
        public = ti.group_tensors_by_device_and_dtype(lists)
    assert set(fast) == set(public) == {(a.device, torch.float32), (a.device, torch.float64)}
    for key in fast:
        for fast_list, public_list in zip(fast[key], public[key]):
            assert [id(t) for t in fast_list] == [id(t) for t in public_list]
    assert [id(t) for t in public[(a.device, torch.float32)][0]] == [id(a), id(c)]


def test_foreach_copy_matches_copy():
    src = [torch.randn(3), torch.tensor(7, dtype=torch.int64)]
    for forced in ((), ("foreach_copy",)):
        dst = [torch.zeros(3), torch.tensor(0, dtype=torch.int64)]
        with ti.force_public(*forced) if forced else contextlib.nullcontext():
            ti.foreach_copy_(dst, src)
        assert all(torch.equal(d, s) for d, s in zip(dst, src))
    with pytest.raises(ValueError, match="2 destinations, 1 sources"):
        ti.foreach_copy_(dst, src[:1])


def test_grad_scaler_scale_is_the_device_tensor_or_the_public_value():
    from test_zenith import _host_syncs_forbidden

    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(torch.ones(()))
    with _host_syncs_forbidden():
        fast = ti.grad_scaler_scale(scaler)
    assert fast is scaler._scale
    with ti.force_public("grad_scaler_scale"):
        public = ti.grad_scaler_scale(scaler)
    assert public.dtype == torch.float32 and public.item() == 256.0
    assert ti.grad_scaler_scale(None) is None
    assert ti.grad_scaler_scale(torch.amp.GradScaler("cpu", enabled=False)) is None


def test_amp_protocol_is_declared_only_where_torch_honours_it():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with ti.force_public("amp_scaling_protocol"):
        assert not ti.declare_amp_scaling(opt)
    assert not getattr(opt, "_step_supports_amp_scaling", False)
    assert ti.declare_amp_scaling(opt) and opt._step_supports_amp_scaling
    assert ti.amp_step_args(opt) == (None, None)
