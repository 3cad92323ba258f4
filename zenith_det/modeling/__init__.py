from .build import ARCHITECTURES, build_model, load_weights
