"""Zenith against an independent reference: a Python list window and plain SGD arithmetic."""
import contextlib
import copy
import math

import pytest
import torch

from zenith_det import Zenith, ZenithScheduler
from zenith_det.solver import global_grad_norm, norm_history
from zenith_det.utils import torch_internals
from float_bounds import l2_norm_rel_bound


@pytest.fixture(params=["fused", "public"])
def sgd_path(request, monkeypatch):
    """Run a test on both update paths: torch's fused SGD kernel, and the public fallback
    Zenith uses where torch has none (the kernel then must not be called at all)."""
    if request.param == "fused":
        if not torch_internals.has_fused_sgd("cpu"):
            pytest.skip(f"torch {torch.__version__} has no fused SGD kernel with a tensor lr on CPU")
        yield "fused"
        return

    def no_kernel(*args, **kwargs):
        raise AssertionError("torch._fused_sgd_ called on the public path")

    monkeypatch.setattr(torch, "_fused_sgd_", no_kernel)
    with torch_internals.force_public("fused_sgd"):
        yield "public"


@pytest.fixture(params=["dot", "foreach_norm"])
def norm_path(request, monkeypatch):
    """Run a test on both ways the CPU norm is taken: every float32/64 gradient through
    `torch.dot` (as the large ones are), or all of them through one `_foreach_norm`."""
    monkeypatch.setattr(norm_history, "_MIN_DOT_NUMEL", 1 if request.param == "dot" else 2**62)
    return request.param



def _float64_norm(grads):
    """The exact global norm, as a reference: each gradient squared and summed in float64."""
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))

class ReferenceZenith:
    """The rule of DEVELOPERS.md written as plainly as possible."""

    def __init__(self, groups, window, start="partial", warmup_steps=0):
        self.groups = groups  # [{"params": [tensor], "lr":..., "momentum":..., ...}]
        self.window = window
        self.start = start
        self.warmup_steps = warmup_steps if start == "after_warmup" else 0
        self.taken = 0
        self.norms = []
        self.zenith = 0.0
        self.bufs = {}
        self.skipped = 0
        self.mult = 1.0

    def step(self, grads):
        flat = [g for group_grads in grads for g in group_grads if g is not None]
        norm = _float64_norm(flat)
        if not math.isfinite(norm):
            self.skipped += 1
            return
        self.taken += 1
        if self.taken <= self.warmup_steps:
            self.mult = 1.0  # "after_warmup": the norm stays out of the window
        else:
            self.norms.append(norm)
            self.norms = self.norms[-self.window :]
            mu = sum(self.norms) / len(self.norms)
            if self.start == "full" and len(self.norms) < self.window:
                self.mult = 1.0  # Z stays 0 until the window is full
            else:
                self.zenith = max(self.zenith, mu)
                self.mult = mu / self.zenith if self.zenith > 0 else 1.0
        for gi, (group, group_grads) in enumerate(zip(self.groups, grads)):
            for pi, (p, g) in enumerate(zip(group["params"], group_grads)):
                if g is None:
                    continue
                d_p = g + group["weight_decay"] * p
                if group["momentum"]:
                    key = (gi, pi)
                    if key not in self.bufs:
                        self.bufs[key] = d_p.clone()
                    else:
                        self.bufs[key] = group["momentum"] * self.bufs[key] + (1 - group["dampening"]) * d_p
                    buf = self.bufs[key]
                    d_p = d_p + group["momentum"] * buf if group["nesterov"] else buf
                p.sub_(group["lr"] * self.mult * d_p)


GROUP_SETTINGS = [
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=1e-3, nesterov=False),
    dict(lr=0.01, momentum=0.8, dampening=0.0, weight_decay=0.0, nesterov=True),
    dict(lr=0.02, momentum=0.5, dampening=0.3, weight_decay=1e-2, nesterov=False),
    dict(lr=0.03, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
]


def _make_params(seed, shapes=((5, 3), (7,), (2, 2, 3))):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in GROUP_SETTINGS]


def _grad_scale(t):
    # Norms that rise, fall and rise again, so Z, the window start and the
    # wrap-around are all exercised.
    return 1.0 + 0.8 * math.sin(t / 9.0) + t / 200.0


@pytest.mark.parametrize("start", ["partial", "full", "after_warmup"])
def test_matches_reference_over_start_and_wraparound(sgd_path, start, norm_path):
    window = 7
    init = _make_params(0)
    params = [[p.clone().requires_grad_(True) for p in group] for group in init]
    ref_groups = [dict(params=[p.clone() for p in group], **s) for group, s in zip(init, GROUP_SETTINGS)]
    opt = Zenith([dict(params=group, **s) for group, s in zip(params, GROUP_SETTINGS)], lr=0.1, window=window,
                 start=start, warmup_steps=12)
    ref = ReferenceZenith(ref_groups, window, start, warmup_steps=12)
    gen = torch.Generator().manual_seed(1)
    for t in range(300):
        grads = []
        for group in params:
            group_grads = []
            for i, p in enumerate(group):
                # Now and then a parameter has no gradient at all.
                g = None if (t + i) % 11 == 0 else torch.randn(p.shape, generator=gen) * _grad_scale(t)
                p.grad = g
                group_grads.append(g)
            grads.append(group_grads)
        opt.step()
        ref.step(grads)
        assert opt.multiplier().item() == pytest.approx(ref.mult, rel=1e-5)
    for group, ref_group in zip(params, ref_groups):
        for p, q in zip(group, ref_group["params"]):
            torch.testing.assert_close(p.detach(), q, rtol=1e-4, atol=1e-5)


def _run_pair(steps, grow):
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    z = Zenith(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, window=5)
    s = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    mults = []
    for t in range(steps):
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = torch.randn_like(pa) * (1.5**t if grow else 1.0 / (1 + t))
            pa.grad, pb.grad = g.clone(), g.clone()
        z.step()
        s.step()
        mults.append(z.multiplier().item())
    return a, b, mults


def test_equals_sgd_while_norms_grow_and_multiplier_is_at_most_one():
    a, b, mults = _run_pair(20, grow=True)
    assert mults == [1.0] * 20
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    _, _, mults = _run_pair(30, grow=False)
    assert all(0 < m <= 1.0 for m in mults)
    assert mults[-1] < 0.5


def test_group_lr_ratios_preserved_and_outer_scheduler_composes():
    p1 = torch.zeros(4, requires_grad=True)
    p2 = torch.zeros(4, requires_grad=True)
    opt = Zenith([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.02}], lr=1.0, momentum=0.0, window=3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)
    for t in range(6):
        before1, before2 = p1.detach().clone(), p2.detach().clone()
        g = torch.ones(4) / (t + 1)
        p1.grad, p2.grad = g.clone(), g.clone()
        opt.step()
        m = opt.multiplier().item()
        torch.testing.assert_close(before1 - p1.detach(), 0.1 * 0.5 * m * g)
        torch.testing.assert_close(before2 - p2.detach(), 0.02 * 0.5 * m * g)
        sched.step()


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_gradient_skips_the_whole_step(bad, sgd_path, norm_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = Zenith(model.parameters(), lr=0.1, window=4)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    snapshot = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state_dict()["zenith_history"].items()}
    params = [p.detach().clone() for p in model.parameters()]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    model.weight.grad = torch.randn_like(model.weight)
    model.weight.grad[0, 0] = bad
    model.bias.grad = torch.randn_like(model.bias)
    opt.step()
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p.detach(), before)
    for p, before in zip(model.parameters(), bufs):
        assert torch.equal(opt.state[p]["momentum_buffer"], before)
    after = opt.state_dict()["zenith_history"]
    for key in ("norms", "pos", "count", "zenith", "mult"):
        assert torch.equal(after[key], snapshot[key]), key
    assert opt.skipped_steps().item() == 1
    # One bad batch must not freeze training.
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert 0 < opt.multiplier().item() <= 1
    assert not torch.equal(model.weight.detach(), params[0])


def _train(opt_factory, steps, state=None):
    torch.manual_seed(123)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = opt_factory(model)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    gen = torch.Generator().manual_seed(7 if state is None else 8)
    x = torch.randn(32, 6, generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_state_dict_round_trip_resumes_bit_identically(tmp_path, norm_path):
    factory = lambda m: Zenith(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, window=5)
    model, opt = _train(factory, 12)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    # Continue the same objects, and a fresh pair restored from disk.
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(32, 6, generator=gen)
    for _ in range(9):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    resumed, resumed_opt = _train(factory, 9, state=state)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    a, b = opt.state_dict(), resumed_opt.state_dict()
    for key, value in a["zenith_history"].items():
        other = b["zenith_history"][key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key


def test_load_rejects_another_window():
    model, opt = _train(lambda m: Zenith(m.parameters(), lr=0.05, window=5), 2)
    other = Zenith(model.parameters(), lr=0.05, window=6)
    with pytest.raises(ValueError, match="window"):
        other.load_state_dict(opt.state_dict())


@contextlib.contextmanager
def _host_syncs_forbidden():
    def forbid(name):
        def raiser(self, *args, **kwargs):
            raise AssertionError(f"host sync: Tensor.{name} called inside step()")

        return raiser

    names = ["item", "__float__", "__bool__", "__int__", "tolist"]
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, forbid(n))
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_step_makes_no_host_sync(sgd_path, norm_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = Zenith(
        [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.2, "weight_decay": 0.0}],
        lr=0.1,
        weight_decay=1e-4,
        window=3,
    )
    for t in range(6):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        if t == 4:
            model.bias.grad[0] = float("nan")
        with _host_syncs_forbidden():
            opt.step()
    assert opt.skipped_steps().item() == 1
    # The guard does bite: a sync inside it raises.
    with pytest.raises(AssertionError, match="host sync"):
        with _host_syncs_forbidden():
            torch.ones(1).item()


# -- the public update: where torch has no fused SGD kernel for the device type --


def _grouped_params(seed):
    return [[p.requires_grad_(True) for p in group] for group in _make_params(seed)]


def _set_grads(param_groups, t, gen):
    """The same random grads (some missing, some steps inf) on every model in `param_groups`."""
    for groups in zip(*param_groups):
        for i, params in enumerate(zip(*groups)):
            g = None if (t + i) % 7 == 3 else torch.randn(params[0].shape, generator=gen) * _grad_scale(t)
            for p in params:
                p.grad = None if g is None else g.clone()


def test_public_update_equals_torch_sgd_with_each_steps_lr():
    """lr_t changes every step; torch.optim.SGD given that lr must take the same step
    (weight decay, momentum, dampening with SGD's first step, nesterov, momentum 0)."""
    zen_params, sgd_params = _grouped_params(0), _grouped_params(0)
    with torch_internals.force_public("fused_sgd"):
        zen = Zenith([dict(params=g, **s) for g, s in zip(zen_params, GROUP_SETTINGS)], lr=1.0, window=5)
    sgd = torch.optim.SGD([dict(params=g, **s) for g, s in zip(sgd_params, GROUP_SETTINGS)], lr=1.0)
    gen = torch.Generator().manual_seed(3)
    mults = []
    for t in range(40):
        _set_grads([zen_params, sgd_params], t, gen)
        with torch_internals.force_public("fused_sgd"), _host_syncs_forbidden():
            zen.step()
        mults.append(zen.multiplier().item())
        for group, settings in zip(sgd.param_groups, GROUP_SETTINGS):
            group["lr"] = settings["lr"] * mults[-1]
        sgd.step()
        for gz, gs in zip(zen_params, sgd_params):
            for pz, ps in zip(gz, gs):
                torch.testing.assert_close(pz.detach(), ps.detach())
                bz, bs = zen.state[pz].get("momentum_buffer"), sgd.state[ps].get("momentum_buffer")
                if bs is not None:
                    torch.testing.assert_close(bz, bs)
    assert min(mults) < 0.8  # the learning rate really moved


def test_public_update_equals_the_fused_kernel_including_a_skipped_step():
    if not torch_internals.has_fused_sgd("cpu"):
        pytest.skip(f"torch {torch.__version__} has no fused SGD kernel with a tensor lr on CPU")
    fused_params, public_params = _grouped_params(1), _grouped_params(1)
    make = lambda params: Zenith([dict(params=g, **s) for g, s in zip(params, GROUP_SETTINGS)], lr=1.0, window=4)
    fused, public = make(fused_params), make(public_params)
    gen = torch.Generator().manual_seed(4)
    for t in range(25):
        _set_grads([fused_params, public_params], t, gen)
        if t in (0, 12):  # non-finite on the very first step (dampening's first step) and later
            fused_params[1][0].grad[0, 0] = public_params[1][0].grad[0, 0] = float("nan")
        before = [p.detach().clone() for group in public_params for p in group]
        fused.step()
        with torch_internals.force_public("fused_sgd"), _host_syncs_forbidden():
            public.step()
        after = [p.detach() for group in public_params for p in group]
        if t in (0, 12):
            assert all(torch.equal(a, b) for a, b in zip(after, before))
        for gf, gp in zip(fused_params, public_params):
            for pf, pp in zip(gf, gp):
                torch.testing.assert_close(pp.detach(), pf.detach())
                bf = fused.state[pf].get("momentum_buffer")
                if bf is not None:
                    torch.testing.assert_close(public.state[pp]["momentum_buffer"], bf)
    hf, hp = fused.state_dict()["zenith_history"], public.state_dict()["zenith_history"]
    for key in ("norms", "count", "zenith", "mult", "skipped"):
        torch.testing.assert_close(hp[key], hf[key])
    assert public.skipped_steps().item() == 2


def test_grad_scaler_without_the_amp_protocol_unscales_and_skips_itself():
    """A torch whose GradScaler does not hand grad_scale/found_inf to step(): Zenith does not
    declare it, GradScaler unscales (and skips inf steps) itself, and ZENITH's rule is unchanged."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    with torch_internals.force_public("amp_scaling_protocol"):
        opt = Zenith(model.parameters(), lr=0.1, window=10)
    assert not getattr(opt, "_step_supports_amp_scaling", False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() / 1024.0 for p in model.parameters()]))
    scaler.step(opt)
    scaler.update()
    assert opt.last_grad_norm().item() == pytest.approx(expected.item(), rel=1e-5)
    _assert_inf_step_is_skipped(model, opt, scaler, x)


def test_converges_on_logistic_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=gen)
    w_true = torch.randn(10, generator=gen)
    y = (x @ w_true > 0).float()
    model = torch.nn.Linear(10, 1)
    opt = Zenith(model.parameters(), lr=0.5, momentum=0.9, window=20)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    first = loss_fn(model(x).squeeze(1), y).item()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first


def test_global_grad_norm_takes_large_grads_through_dot_and_matches_float64(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(300, 1000, generator=gen)  # over _MIN_DOT_NUMEL, contiguous: torch.dot
    grads = [
        big,
        torch.randn(1000, 300, generator=gen).t(),  # large but not contiguous: _foreach_norm
        torch.randn(70_000, generator=gen, dtype=torch.float64),  # float64 dot
        torch.randn(100_000, generator=gen).to(torch.bfloat16),  # low precision: _foreach_norm(dtype=float32)
        torch.randn(5, 3, generator=gen),  # small: _foreach_norm
        torch.randn((), generator=gen),
    ]
    dotted = []
    real_dot = torch.dot
    monkeypatch.setattr(torch, "dot", lambda a, b: dotted.append(a.numel()) or real_dot(a, b))
    norm = global_grad_norm(grads, "cpu")
    assert sorted(dotted) == [70_000, 300_000]
    exact = _float64_norm(grads)
    assert norm.dtype == torch.float32 and norm.shape == ()
    # float32 sums of 770,016 squares in an order the thread count decides: within l2_norm_rel_bound
    # (about 2.4e-2 here); leaving out any of the four large tensors would move it by 4.6% or more.
    assert norm.item() == pytest.approx(exact, rel=l2_norm_rel_bound(sum(g.numel() for g in grads)))
    # Non-finite values anywhere come out non-finite.
    for bad in (float("inf"), float("nan")):
        spoilt = big.clone()
        spoilt[7, 7] = bad
        assert not torch.isfinite(global_grad_norm([spoilt] + grads[1:], "cpu"))
    assert global_grad_norm([], "cpu").item() == 0.0


def test_bf16_norm_accumulates_in_float32(sgd_path):
    p = torch.zeros(4096, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.full((4096,), 0.01, dtype=torch.bfloat16)
    opt = Zenith([p], lr=0.1, window=2)
    opt.step()
    exact = math.sqrt(4096 * float(torch.tensor(0.01, dtype=torch.bfloat16)) ** 2)
    assert opt.last_grad_norm().dtype == torch.float32
    # 4096 equal squares summed in float32: within l2_norm_rel_bound(4096) (1.2e-4); accumulated in
    # bfloat16 instead, the sum would stall at 256 terms' worth (relative error near 0.75).
    assert opt.last_grad_norm().item() == pytest.approx(exact, rel=l2_norm_rel_bound(4096))


def test_grad_scaler_norm_is_unscaled_and_inf_steps_do_not_enter_the_window(sgd_path, norm_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = Zenith(model.parameters(), lr=0.1, window=10)
    assert opt._step_supports_amp_scaling  # this torch hands grad_scale/found_inf to step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    unscaled = [p.grad / 1024.0 for p in model.parameters()]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in unscaled]))
    before = [p.detach().clone() for p in model.parameters()]
    with _host_syncs_forbidden():
        scaler.step(opt)
    scaler.update()
    assert opt.last_grad_norm().item() == pytest.approx(expected.item(), rel=1e-5)
    # The update used the unscaled grads, and left them unscaled (as GradScaler.unscale_ does).
    for p, g, b in zip(model.parameters(), unscaled, before):
        torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(p.detach(), b - 0.1 * g)
    _assert_inf_step_is_skipped(model, opt, scaler, x)
    assert scaler.get_scale() < 1024.0


@pytest.mark.parametrize("amp", [False, True])
def test_norm_is_of_the_gradients_the_update_uses_after_accumulation_and_clipping(amp):
    """Two backward passes accumulate, then clipping (after unscale_ under AMP): the norm
    that sets the learning rate is that of the clipped sum, and the update uses it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    opt = Zenith(model.parameters(), lr=0.1, momentum=0.0, window=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0) if amp else None
    for _ in range(3):
        opt.zero_grad()
        for _ in range(2):  # gradient accumulation
            loss = model(torch.randn(8, 6)).pow(2).mean()
            (scaler.scale(loss) if amp else loss).backward()
        if amp:
            scaler.unscale_(opt)
        accumulated = _float64_norm(p.grad for p in model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5 * accumulated)
        clipped = [p.grad.clone() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        if amp:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        assert opt.last_grad_norm().item() == pytest.approx(0.5 * accumulated, rel=1e-5)
        lr = 0.1 * opt.multiplier().item()
        for p, g, b in zip(model.parameters(), clipped, before):
            torch.testing.assert_close(p.detach(), b - lr * g)


def _assert_inf_step_is_skipped(model, opt, scaler, x):
    """An inf loss under GradScaler: the weights stay and the norm never enters the window."""
    count = opt.state_dict()["zenith_history"]["count"].item()
    weights = model.weight.detach().clone()
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(model.weight.detach(), weights)
    assert opt.state_dict()["zenith_history"]["count"].item() == count


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=0.1, window=0), "window"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov"),
        (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Zenith([torch.zeros(2, requires_grad=True)], **kwargs)


def test_sparse_gradients_are_rejected():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = Zenith(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_zenith_scheduler_matches_zenith_multiplier_and_restores_lr():
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 2)
    b = torch.nn.Linear(5, 2)
    b.load_state_dict(a.state_dict())
    # "partial": the multiplier leaves 1 from the second step, so the two are compared on it throughout.
    zen = Zenith(a.parameters(), lr=0.1, window=4, start="partial")
    adam = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    sched = ZenithScheduler(adam, window=4, start="partial")
    warmup = torch.optim.lr_scheduler.LambdaLR(adam, lambda it: min(1.0, (it + 1) / 3))
    for t in range(12):
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = torch.randn_like(pa) / (1 + t % 5)
            pa.grad, pb.grad = g.clone(), g.clone()
        zen.step()
        with _host_syncs_forbidden():
            adam.step()
        warmup.step()
        assert sched.multiplier().item() == pytest.approx(zen.multiplier().item(), rel=1e-6)
        assert adam.param_groups[0]["lr"] == pytest.approx(1e-2 * min(1.0, (t + 2) / 3))
    assert sched.multiplier().item() < 1.0
    restored = ZenithScheduler(torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True), window=4, start="partial")
    restored.load_state_dict(sched.state_dict())
    assert torch.equal(restored.multiplier(), sched.multiplier())


def test_zenith_scheduler_scales_the_update():
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = ZenithScheduler(opt, window=2, start="partial")  # Z from the first step: m < 1 at the second
    for g in (4.0, 1.0):
        before = p.detach().clone()
        p.grad = torch.full((3,), g)
        opt.step()
        torch.testing.assert_close(before - p.detach(), sched.multiplier() * p.grad)
    # window [|4|, |1|]·sqrt(3): mean 2.5 against zenith 4 -> 0.625
    assert sched.multiplier().item() == pytest.approx(0.625)


def test_zenith_scheduler_history_rides_in_the_optimizer_checkpoint():
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    sched = ZenithScheduler(opt, window=3, start="partial")  # Z from the first step: m < 1 by the third
    for g in (3.0, 1.0, 2.0):
        p.grad = torch.full((3,), g)
        opt.step()
    state = opt.state_dict()
    fresh = torch.optim.AdamW([p], lr=0.1, fused=True)
    restored = ZenithScheduler(fresh, window=3, start="partial")
    fresh.load_state_dict(state)
    assert restored.multiplier().item() == pytest.approx(2.0 / 3.0)
    assert torch.equal(restored.history.norms, sched.history.norms)


@pytest.mark.parametrize("start", ["partial", "full", "after_warmup"])
def test_start_choices_skip_nonfinite_norms_and_resume_exactly(start):
    """Each start choice against the reference, with non-finite norms inside the warmup and the
    first window, and a state_dict round trip in the middle."""
    norms = [3.0, float("nan"), 5.0, 1.0, float("inf"), 2.0, 8.0, 0.5, 4.0, 6.0, 1.5, 9.0, 0.25]

    def make():
        return Zenith([torch.zeros(1, requires_grad=True)], lr=0.0, momentum=0.0, window=4, start=start, warmup_steps=3)

    opt = make()
    ref_group = dict(params=[torch.zeros(1)], lr=0.0, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)
    ref = ReferenceZenith([ref_group], 4, start, warmup_steps=3)
    mults = []
    for i, value in enumerate(norms):
        opt.param_groups[0]["params"][0].grad = torch.tensor([value])
        opt.step()
        ref.step([[torch.tensor([value])]])
        mults.append(opt.multiplier().item())
        assert mults[-1] == pytest.approx(ref.mult, rel=1e-6), i
        if i == 5:
            saved = copy.deepcopy(opt.state_dict())
    if start == "full":
        assert mults[:5] == [1.0] * 5  # four finite norms arrive only at step 6
    resumed = make()
    resumed.load_state_dict(saved)
    for i, value in enumerate(norms[6:], start=6):
        resumed.param_groups[0]["params"][0].grad = torch.tensor([value])
        resumed.step()
        assert resumed.multiplier().item() == mults[i]
    other = Zenith([torch.zeros(1, requires_grad=True)], lr=0.0, window=4,
                   start="full" if start != "full" else "partial", warmup_steps=3)
    with pytest.raises(ValueError, match="start mismatch"):
        other.load_state_dict(saved)


def _multipliers_unless_told(build_step, norms):
    """The multipliers one way of building ZENITH gives, with no start-up rule given, for
    gradients whose norms are `norms` (a parameter of one element)."""
    p = torch.nn.Parameter(torch.zeros(1))
    multiplier, step = build_step(p)
    out = []
    for value in norms:
        p.grad = torch.tensor([value])
        step()
        out.append(multiplier().item())
    return out


def test_every_way_of_building_zenith_starts_the_window_the_same_way():
    """Zenith, ZenithScheduler and a config all start the window by the solver's default:
    "full", the multiplier exactly 1 until W norms are held (the CPU race found "partial",
    which drops below 1 at the second falling norm, behind both others)."""
    from zenith_det.config import get_cfg
    from zenith_det.solver import build_optimizer

    norms = [8.0, 4.0, 2.0, 1.0, 1.0, 1.0]  # falling: "partial" would give m < 1 from step 2

    def plain(p):
        opt = Zenith([p], lr=0.1, window=3)
        return opt.multiplier, opt.step

    def scheduler(p):
        sched = ZenithScheduler(torch.optim.SGD([p], lr=0.1), window=3)
        return sched.multiplier, sched.optimizer.step

    def from_config(p):
        cfg = get_cfg()
        cfg.merge_from_list(["SOLVER.OPTIMIZER", "ZENITH", "SOLVER.ZENITH.WINDOW", "3", "SOLVER.WARMUP_ITERS", "0"])
        opt = build_optimizer(cfg, torch.nn.ParameterList([p]))
        return opt.multiplier, opt.step

    runs = [_multipliers_unless_told(build, norms) for build in (plain, scheduler, from_config)]
    assert norm_history.DEFAULT_START == "full"
    assert runs[0][:3] == [1.0, 1.0, 1.0]  # 3 norms held only after step 3
    assert runs[0][3] == pytest.approx((4.0 + 2.0 + 1.0) / (8.0 + 4.0 + 2.0))  # Z: the first full window's mean
    assert runs[1] == pytest.approx(runs[0]) and runs[2] == pytest.approx(runs[0])
