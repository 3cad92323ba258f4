from ..config.architectures import ARCHITECTURES
from .build import build_model, load_weights
