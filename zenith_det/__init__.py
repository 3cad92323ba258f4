"""zenith_det: detection training with the ZENITH optimizer."""
__version__ = "0.1.0"
__all__ = ["Predictor", "Zenith", "ZenithScheduler"]


def __getattr__(name):
    # Imported on first use, not with the package: an entry point imports
    # zenith_det.utils.early_signals on its first line, before torch is loaded.
    if name == "Predictor":
        from .inference import Predictor

        return Predictor
    if name in __all__:
        from . import solver

        return getattr(solver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
