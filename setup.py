from setuptools import find_packages, setup

BASELINES = [
    "pytorch-optimizer>=4.1",  # DADAPT_SGD, PRODIGY, ALIG, SCHEDULEFREE_SGD_PO
    "schedulefree>=1.4",  # SCHEDULEFREE_SGD (the reference implementation)
    "dog-optimizer>=1.0.3",  # DOG, LDOG (imported as `dog`)
    "dowgopt>=0.13",  # DOWG (its module `dowg` is loaded from the dowgopt distribution)
    "parameterfree>=0.0.1",  # COCOB
]

# zenith_det/race/stats.py and power.py (t quantiles at any dof, the noncentral t, TOST's
# integral) import scipy when first used, and the report's figures matplotlib (tools/compare.py
# --report-only needs both); each says which extra installs it where it is missing.
ANALYSIS = ["scipy>=1.9", "matplotlib>=3.7"]

# tools/export_model.py --format onnx writes through onnx; onnxruntime runs the file (tests, benchmark).
EXPORT = ["onnx>=1.16", "onnxruntime>=1.18"]

setup(
    name="zenith_det",
    version="0.1.0",
    description="Detection training with ZENITH: SGD whose learning rate follows the gradient norm's own history",
    packages=find_packages(include=["zenith_det", "zenith_det.*"]),
    python_requires=">=3.10",
    install_requires=[
        # 2.4: CPU fused SGD/AdamW (the SGD and ADAMW optimizers) and torch.amp.GradScaler(device).
        # Private torch APIs sit behind capability checks with public fallbacks
        # (zenith_det/utils/torch_internals.py). Tested up to 2.14; torchvision pairs 0.19 <-> 2.4.
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "pycocotools>=2.0.7",
        "fvcore>=0.1.5.post20221221",
        "tensorboard>=2.14",
        "pyyaml",
        "numpy",
        "pillow",
        "tqdm",  # tools/predict.py's progress bar
    ],
    extras_require={
        # The baselines, scipy and matplotlib too, so CI runs tests/test_baselines.py and
        # tests/race/ instead of skipping them (all small, pure-python wheels but matplotlib).
        # submitit too, so CI runs tests/test_slurm.py (tools/submit.py) instead of skipping it.
        "test": ["pytest>=7", "hypothesis>=6.80", "ruff>=0.4", "faster-coco-eval>=1.6", "matplotlib>=3.7",
                 "submitit>=1.5"] + ANALYSIS + BASELINES + EXPORT,
        # The optimizers tools/compare.py races ZENITH against (zenith_det/solver/baselines.py).
        "baselines": BASELINES,
        # ONNX export and ONNX Runtime (docs/inference.md); TorchScript needs nothing more.
        "export": EXPORT,
        "fast_eval": ["faster-coco-eval>=1.6"],
        "plots": ["matplotlib>=3.7"],
        # The race's statistics (tools/compare.py: exact t quantiles, TOST, power); training never needs it.
        "analysis": ANALYSIS,
        # tools/submit.py: SLURM jobs through submitit, requeued at time limits and preemption (docs/cluster.md).
        "slurm": ["submitit>=1.5"],
        # detectron2 is not on the package registry: install it from source yourself
        # (docs/detectron2.md, "Installing detectron2"); zenith_det.detectron2 then works.
    },
)
