"""Analysis of trained runs: what the comparison and the paper's claims are measured with."""
from .sharpness import checkpoint_sharpness, detection_loss_fn, lr_implied_sharpness, power_iteration

__all__ = ["checkpoint_sharpness", "detection_loss_fn", "lr_implied_sharpness", "power_iteration"]
