"""zenith_det: detection training with the ZENITH optimizer."""
from .solver import Zenith, ZenithScheduler

__version__ = "0.1.0"
__all__ = ["Zenith", "ZenithScheduler"]
