"""The exact curvature probe: a RoIAlign with derivatives of every order, exact Hessian-vector
products, and Lanczos against a dense eigendecomposition."""
import pytest
import torch
import torchvision
from torch.autograd import gradcheck, gradgradcheck

from zenith_det.race.exact_hvp import (ExactHVP, exact_roi_align, hessian_extremes, probe_model,
                                       roi_align_twice_differentiable)


def _features_and_boxes(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 9, 11, generator=gen, dtype=dtype, requires_grad=True)
    boxes = torch.tensor([[0, 1.2, 0.7, 7.9, 6.3], [1, 0.0, 2.5, 10.4, 8.1], [0, 3.3, 3.3, 5.1, 4.0]], dtype=dtype)
    return features, boxes


@pytest.mark.parametrize("sampling_ratio, aligned", [(2, True), (-1, False), (0, True)])
def test_the_twice_differentiable_roi_align_is_torchvisions_with_exact_derivatives(sampling_ratio, aligned):
    features, boxes = _features_and_boxes()
    ours = roi_align_twice_differentiable(features, boxes, (3, 4), 0.5, sampling_ratio, aligned)
    theirs = torchvision.ops.roi_align(features, boxes, (3, 4), 0.5, sampling_ratio, aligned)
    assert torch.equal(ours, theirs)  # the same op, the same kernel
    weights = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), features)
    assert torch.equal(g_ours, g_theirs)  # torchvision's own backward kernel

    def fn(x):
        return roi_align_twice_differentiable(x, boxes, (3, 4), 0.5, sampling_ratio, aligned)

    assert gradcheck(fn, (features,))
    assert gradgradcheck(fn, (features,))  # torchvision.ops.roi_align refuses this


def test_torchvisions_roi_align_refuses_double_backward():
    """Why the probe needs its own RoIAlign (if torchvision learns double backward, drop ours)."""
    features, boxes = _features_and_boxes()
    out = torchvision.ops.roi_align(features, boxes, (3, 4), 0.5, 2, True)
    (grad,) = torch.autograd.grad((out ** 2).sum(), features, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), features)


class _RoIModel(torch.nn.Module):
    """conv -> MultiScaleRoIAlign (torchvision's pooler, as the detection heads use it) -> tanh -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
        self.head = torch.nn.Linear(3 * 2 * 2, 2).double()
        self.pool = torchvision.ops.MultiScaleRoIAlign(["p"], (2, 2), sampling_ratio=2)

    def forward(self, images, boxes):
        features = {"p": torch.tanh(self.conv(images))}
        pooled = self.pool(features, boxes, [(16, 16)] * len(boxes))
        return self.head(torch.tanh(pooled.flatten(1)))


def test_lanczos_on_exact_products_matches_a_dense_eigendecomposition():
    """A model with torchvision's RoIAlign pooler in it, small enough that its whole Hessian can
    be formed column by column from exact products and decomposed by eigvalsh."""
    model = _RoIModel()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 2, 16, 16, generator=gen, dtype=torch.float64)
    boxes = [torch.tensor([[1.0, 2.0, 9.0, 12.5], [4.0, 0.5, 15.0, 7.0]], dtype=torch.float64),
             torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float64)]
    labels = torch.tensor([0, 1, 1])

    def loss_fn():
        return torch.nn.functional.cross_entropy(model(images, boxes), labels)

    params = list(model.parameters())
    with exact_roi_align():
        hvp = ExactHVP(loss_fn, params)
        n = sum(p.numel() for p in params)
        columns = []
        for j in range(n):
            unit = torch.zeros(n, dtype=torch.float64)
            unit[j] = 1
            vector = [c.reshape(p.shape) for c, p in zip(unit.split([p.numel() for p in params]), params)]
            columns.append(torch.cat([h.reshape(-1) for h in hvp(vector)]))
        dense = torch.stack(columns, dim=1)
        # Exact products are symmetric to float64 rounding of sums over n terms (bound: n * eps * max|H|).
        assert (dense - dense.T).abs().max() <= n * 2.3e-16 * dense.abs().max() * 10
        truth = torch.linalg.eigvalsh((dense + dense.T) / 2)
        found = hessian_extremes(ExactHVP(loss_fn, params), params, tol=1e-10)
    assert found.converged
    # ARPACK's tol bounds each Ritz value's error relative to it (1e-10 here).
    assert found.lambda_max == pytest.approx(truth.max().item(), rel=1e-8)
    assert found.lambda_min == pytest.approx(truth.min().item(), rel=1e-8)
    assert truth.min() < 0 < truth.max()  # an indefinite Hessian: both ends are informative


def test_exact_products_agree_with_double_backward_of_a_plain_model():
    """On a model torch differentiates twice by itself, ExactHVP is torch.autograd.functional.hvp."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    params = list(net.parameters())
    vector = [torch.randn_like(p) for p in params]

    def loss_fn():
        return (net(x) ** 2).mean()

    ours = ExactHVP(loss_fn, params)(vector)
    names = [n for n, _ in net.named_parameters()]

    def functional(*values):
        return (torch.func.functional_call(net, dict(zip(names, values)), (x,)) ** 2).mean()

    _, theirs = torch.autograd.functional.hvp(functional, tuple(p.detach() for p in params), tuple(vector))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)  # float64, a few dozen terms per entry


def test_the_weights_come_back_from_a_saved_copy_even_when_the_probe_fails():
    model = _RoIModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken_loss():
        with torch.no_grad():
            model.conv.weight.add_(1.0)  # a loss that moves the weights, then fails
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        probe_model(model, broken_loss)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
