from setuptools import find_packages, setup

setup(
    name="zenith_det",
    version="0.1.0",
    description="Detection training with ZENITH: SGD whose learning rate follows the gradient norm's own history",
    packages=find_packages(include=["zenith_det", "zenith_det.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "pycocotools>=2.0.7",
        "fvcore>=0.1.5.post20221221",
        "tensorboard>=2.14",
        "pyyaml",
        "numpy",
        "pillow",
    ],
    extras_require={
        "test": ["pytest>=7", "faster-coco-eval>=1.6"],
        "fast_eval": ["faster-coco-eval>=1.6"],
        "plots": ["matplotlib>=3.7"],
        # detectron2 is not on the package registry: install it from source yourself
        # (see README, "detectron2 integration"); zenith_det.detectron2 then works.
    },
)
