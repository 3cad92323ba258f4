#!/usr/bin/env python
"""Train (or evaluate) a torchvision Mask / Keypoint R-CNN from a YAML config.

    python tools/train_net.py --config configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml
    python tools/train_net.py --config configs/mask_rcnn_zenith.yaml --num-gpus 8
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        tools/train_net.py --config configs/mask_rcnn_zenith.yaml
    srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 python tools/train_net.py --config ...   # no torchrun
    python tools/submit.py --config ... --nodes 2 --gpus-per-node 8   # SLURM via submitit, requeued (docs/cluster.md)
    python tools/train_net.py --config ... --resume          # after a stop or a crash
    python tools/train_net.py --config ... --eval-only MODEL.WEIGHTS output/model_final.pth

Exit codes: 0 done, 2 bad input (one line says what to fix), 3 diverged, 75 preempted
(SIGTERM, SIGINT or SIGUSR2: a checkpoint was written, continue with --resume).
"""
# First, before the seconds of heavy imports: a stop signal now ends the process with exit 75
# (run as a script or as a spawned worker; a test importing this file keeps its own handlers).
from zenith_det.utils.early_signals import exit_on_stop_signals

if __name__ in ("__main__", "__mp_main__"):
    exit_on_stop_signals()

import sys  # noqa: E402

from zenith_det.engine.train_net import cli as _cli  # noqa: E402


def cli(argv=None) -> int:
    return _cli(argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(cli())
