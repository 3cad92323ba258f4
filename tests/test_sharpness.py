"""The flatness probe of a checkpoint: Lanczos on exact Hessian-vector products of the detection loss."""
import os

import pytest
import torch

from zenith_det.race.sharpness import METHOD, checkpoint_sharpness, lr_implied_sharpness
from zenith_det.engine import Trainer, default_setup


def test_lr_implied_sharpness():
    assert lr_implied_sharpness(0.02, 0.9) == pytest.approx(190.0)
    assert lr_implied_sharpness(0.0, 0.9) == float("inf")


@pytest.mark.slow
def test_a_checkpoint_gives_the_same_extremes_twice_and_its_products_are_symmetric(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.MAX_ITER = 4
    default_setup(cfg, resume=False)
    Trainer(cfg).train()
    path = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    first = checkpoint_sharpness(path, num_batches=1, max_restarts=20, tol=1e-3)
    second = checkpoint_sharpness(path, num_batches=1, max_restarts=20, tol=1e-3)
    assert first["method"] == METHOD
    assert first["eigenvalue"] == second["eigenvalue"] and first["lambda_min"] == second["lambda_min"]  # deterministic
    assert first["lambda_min"] <= first["eigenvalue"] and torch.isfinite(torch.tensor(first["eigenvalue"]))
    assert first["converged"] == (first["residual_max"] <= 1e-3 and first["residual_min"] <= 1e-3)
    assert first["optimizer"] == "ZENITH" and first["momentum"] == 0.9 and 0 < first["lr"] <= 0.02
    assert first["lr_implied"] == pytest.approx(2 * 1.9 / first["lr"])
    assert first["hvps"] > 0


@pytest.mark.slow
def test_exact_products_of_a_detection_model_are_symmetric(tiny_cfg):
    """u.Hv = v.Hu for the whole Mask R-CNN loss (box, mask and RPN heads through RoIAlign): the
    products are of one symmetric operator, which a gradient difference is not."""
    import itertools

    from zenith_det.data import build_detection_train_loader, metadata_from_cfg
    from zenith_det.modeling import build_model
    from zenith_det.race.exact_hvp import ExactHVP, exact_roi_align
    from zenith_det.race.sharpness import detection_loss_fn

    cfg = tiny_cfg.clone()
    model = build_model(cfg, metadata_from_cfg(cfg))
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg)), 1))
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    u, v = ([torch.randn(p.shape, generator=gen) for p in params] for _ in range(2))
    with exact_roi_align():
        hvp = ExactHVP(detection_loss_fn(model, batches), params)
        hu, hv = hvp(u), hvp(v)
    dot = lambda a, b: sum((x.double() * y.double()).sum() for x, y in zip(a, b)).item()  # noqa: E731
    # float32 products: an entry of Hv carries a rounding error of about eps32 * sqrt(k) of its k
    # terms' magnitude (k <= ~1e3 here, eps32 = 6e-8: ~2e-6 relative), and the dot products over n
    # entries average those down by sqrt(n); 1e-6 of |u| |Hv| bounds it (measured: 2e-9). A gradient
    # difference is not symmetric at this level: its bias is a jump of the gradient.
    scale = (dot(u, u) * dot(hv, hv)) ** 0.5
    assert abs(dot(u, hv) - dot(v, hu)) <= 1e-6 * scale
