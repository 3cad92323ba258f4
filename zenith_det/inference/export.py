"""A checkpoint's model as a TorchScript or ONNX file for serving, with its meta in a json beside it.

    export_model("model_final.pth", "torchscript", "exported/")   # exported/model.ts + exported/model.ts.json
    export_model("model_final.pth", "onnx", "exported/")          # exported/model.onnx + exported/model.onnx.json

Both take one float32 RGB image (3, H, W) in [0, 1] of any size and resize and normalise it
inside, as the eager model does at test time (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST):
  TorchScript (torch.jit.script): model([image]) -> (losses, [detections dict]), torchvision's form.
  ONNX (torch's TorchScript-based exporter, opset 17, H and W dynamic): input "image", outputs
  "boxes", "labels", "scores", and "masks" (N, 1, H, W probabilities) or "keypoints" (N, K, 3)
  and "keypoints_scores" (N, K), as the json beside it lists them.
The score threshold is part of the exported graph (model.json says which). What an exporter
cannot do on this torch is one line (UserError), never a half-written file.
"""
import copy
import logging
import os
import warnings
from typing import Dict, Optional, Tuple

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..errors import UserError
from ..utils.fileio import atomic_write, atomic_write_json
from .checkpoint import InferenceModel, load_for_inference

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "export_model", "exportable_module", "meta_path", "onnx_detections", "onnx_session",
           "output_names", "sample_image"]

EXPORT_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
ONNX_OPSET = 17
# ImageNet statistics, as the eager model's transform (modeling/build.py TrainTestResize) uses them.
_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class ExportTransform(GeneralizedRCNNTransform):
    """torchvision's transform at the test sizes, whose scripted resize sizes images as eager does.

    Scripted or traced, torchvision computes the scale in float32 and the output size from it:
    137 px scaled to 96 can become 95 rows where eager Python's float64 gives 96, and every
    detection moves. Here both compute eager's size; eager runs torchvision's own code.
    """

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None
               ) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        if not torch.jit.is_scripting():
            return self._eager_or_traced_resize(image, target)
        height, width = image.shape[-2], image.shape[-1]
        scale = min(float(self.min_size[-1]) / min(height, width), float(self.max_size) / max(height, width))
        image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        return image, target  # inference: no targets to resize

    @torch.jit.unused
    def _eager_or_traced_resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None
                                ) -> Tuple[Tensor, Optional[Dict[str, Tensor]]]:
        if not torch.jit.is_tracing():
            return super().resize(image, target)
        # Traced, torchvision's size is floor(side * scale) in float32, and ONNX Runtime's float32
        # makes 135 * (96 / 135) 95.99999: one row short. Here the size is eager's, computed by
        # the same float64 operations (eager Python's floats), and stays dynamic.
        shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        # 1-d float64 tensors throughout: the exporter casts 0-d ones (and Python numbers) to float32.
        limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)], dtype=torch.float64)
        scale = (limits / shape.sort().values).min(dim=0, keepdim=True).values  # short side, then the cap
        size = torch.floor(shape * scale)
        # Handed over as per-side factors half a row past that size: the traced float32 floor lands on
        # it whatever its rounding, and the resampling uses size / side (recompute_scale_factor), as eager.
        factors = ((size + 0.5) / shape).to(torch.float32)
        image = torch.nn.functional.interpolate(image[None], scale_factor=(factors[0], factors[1]), mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        return image, target


def exportable_module(loaded: InferenceModel, score_threshold: float) -> torch.nn.Module:
    """A CPU copy of the model with torchvision's own transform at the test sizes (what the
    scripting and tracing paths of torchvision's detection models are written for)."""
    model = copy.deepcopy(loaded.model).cpu()
    model.transform = ExportTransform(loaded.cfg.INPUT.MIN_SIZE_TEST, loaded.cfg.INPUT.MAX_SIZE_TEST, _MEAN, _STD)
    model.roi_heads.score_thresh = float(score_threshold)
    return model.eval()  # the new transform too: in training mode it would not map outputs back to the image


def output_names(architecture: str) -> list:
    heads = {"MaskRCNN": ["masks"], "KeypointRCNN": ["keypoints", "keypoints_scores"]}.get(architecture, [])
    return ["boxes", "labels", "scores"] + heads


def sample_image(cfg, seed: int = 0) -> torch.Tensor:
    """A fixed random image at the test size, for tracing: (3, MIN_SIZE_TEST, 4/3 of it, within MAX_SIZE_TEST)."""
    height = int(cfg.INPUT.MIN_SIZE_TEST)
    width = min(int(cfg.INPUT.MAX_SIZE_TEST), height * 4 // 3)
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def export_model(weights: str, fmt: str, output_dir: str, *, score_threshold: float = 0.05,
                 loaded: Optional[InferenceModel] = None) -> str:
    """Write OUTPUT_DIR/model.ts or model.onnx, and its meta beside it (FILE.json); returns the model file's path."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    loaded = loaded or load_for_inference(weights, device="cpu")
    module = exportable_module(loaded, score_threshold)
    path = os.path.join(output_dir, EXPORT_FORMATS[fmt])
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output: {output_dir} cannot be created ({e.strerror})") from None
    architecture = loaded.meta["architecture"]
    if fmt == "torchscript":
        _export_torchscript(module, path, architecture)
        spec = {"call": "model([image]) -> (losses, [detections])"}
    else:
        _export_onnx(module, path, architecture, sample_image(loaded.cfg))
        spec = {"opset": ONNX_OPSET, "inputs": {"image": ["3", "height", "width"]},
                "outputs": output_names(architecture)}
    atomic_write_json({
        "format": fmt, "file": os.path.basename(path), "checkpoint": os.path.abspath(weights),
        "iteration": loaded.iteration, "score_threshold": float(score_threshold),
        "input": "one float32 RGB image (3, H, W) in [0, 1], any size; resized inside to "
                 f"short side {loaded.cfg.INPUT.MIN_SIZE_TEST}, long side at most {loaded.cfg.INPUT.MAX_SIZE_TEST}",
        **spec, "torch": torch.__version__, "torchvision": torchvision.__version__, "meta": loaded.meta,
    }, meta_path(path), indent=1)
    return path


def _refused(fmt: str, architecture: str, error: Exception) -> UserError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return UserError(f"{fmt} export of a {architecture} is not possible with torch {torch.__version__} and "
                     f"torchvision {torchvision.__version__}: {type(error).__name__}: {first[:300]}")


def _export_torchscript(module, path, architecture) -> None:
    try:
        with warnings.catch_warnings():  # about torchvision's code (the (losses, detections) tuple), not the user's
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(module)
    except Exception as e:  # the scripting compiler's errors have no common type
        raise _refused("TorchScript", architecture, e) from e
    atomic_write(path, lambda f: torch.jit.save(scripted, f))


def _export_onnx(module, path, architecture, sample) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'zenith_det[export]'") from None
    names = output_names(architecture)
    dynamic = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in names}}
    if "masks" in names:
        dynamic["masks"] = {0: "detections", 2: "height", 3: "width"}
    tmp = path + ".tmp"
    try:
        with torch.no_grad(), warnings.catch_warnings():  # the tracer's, about torchvision's code
            warnings.simplefilter("ignore")
            torch.onnx.export(module, ([sample],), tmp, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=names, dynamic_axes=dynamic)
        os.replace(tmp, path)
    except UserError:
        raise
    except Exception as e:  # the exporter's errors have no common type
        raise _refused("ONNX", architecture, e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def meta_path(model_file: str) -> str:
    """Where the json that describes an exported file lies: beside it, named after it."""
    return model_file + ".json"


def onnx_session(path: str):
    """An ONNX Runtime session on the CPU for an exported file."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("running an ONNX file needs onnxruntime: pip install 'zenith_det[export]'") from None
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def onnx_detections(session, image: Tensor) -> Dict[str, Tensor]:
    """One image (3, H, W) float in [0, 1] through an exported file: the eager model's output dict."""
    outputs = session.run(None, {"image": image.detach().cpu().float().numpy()})
    return {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), outputs)}
