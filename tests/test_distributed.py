"""Real multi-process DDP (gloo, CPU): ranks agree, and match one process at the same global batch."""
import os

import pytest
import torch

from zenith_det.config import CfgNode
from zenith_det.engine import HookBase, Trainer, default_setup, launch
from zenith_det.solver import lr_multiplier_source
from zenith_det.utils import comm
from float_bounds import l2_norm_rel_bound

pytestmark = pytest.mark.slow

ITERS = 4


class RecordMultiplier(HookBase):
    def __init__(self):
        self.values = []
        self.norms = []  # (the norm ZENITH used, the float64 norm of the gradients)
        self.grad_storages = []  # (gradients, distinct storages they live in)

    def after_step(self):
        optimizer = self.trainer.optimizer
        self.values.append(lr_multiplier_source(optimizer).multiplier().item())
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        exact = sum(float(g.double().pow(2).sum()) for g in grads) ** 0.5
        self.norms.append((optimizer.last_grad_norm().item(), exact))
        self.grad_storages.append((len(grads), len({g.untyped_storage().data_ptr() for g in grads})))


def train_and_save(cfg_file, out_file_pattern):
    """Runs in every process (also spawned ones, hence module level)."""
    cfg = CfgNode(CfgNode.load_yaml_with_base(cfg_file))
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    recorder = RecordMultiplier()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({"multipliers": recorder.values, "norms": recorder.norms, "grad_storages": recorder.grad_storages,
                "model": model.state_dict()},
               out_file_pattern.format(rank=comm.get_rank()))


def _ddp_cfg(tiny_cfg, out_dir):
    cfg = tiny_cfg.clone()
    cfg.OUTPUT_DIR = out_dir
    cfg.SOLVER.MAX_ITER = ITERS
    # Per-image batch statistics would differ between 1x2 and 2x1 images: freeze them.
    cfg.MODEL.BACKBONE.NORM = "FrozenBN"
    # Grouping is per process; without it both layouts see the same images at each step.
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.CHECKPOINT_PERIOD = 0
    # "partial" moves the multiplier off 1 from the second step, so 4 steps test that the ranks agree on it.
    cfg.SOLVER.ZENITH.START = "partial"
    # torchvision's mask loss averages over all positive proposals of a process's
    # batch, so 2 processes x 1 image is not 1 process x 2 images for Mask R-CNN
    # (38% apart in the mask gradient; detectron2 is the same). Every other loss is
    # a per-image-balanced mean, which is what lets this test compare the layouts.
    cfg.MODEL.META_ARCHITECTURE = "FasterRCNN"
    # Use every anchor and proposal: random subsampling draws from each process's
    # own RNG and would make the two layouts differ for reasons unrelated to DDP.
    # Long side 96: every image pads to 96x96, alone or batched with another.
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 100000
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 100000
    return cfg


def test_two_process_gloo_matches_single_process(tiny_cfg, tmp_path):
    cfg = _ddp_cfg(tiny_cfg, str(tmp_path / "ddp"))
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(cfg.dump())
    launch(train_and_save, 2, use_cuda=False, args=(str(cfg_file), str(tmp_path / "ddp_rank{rank}.pt")))
    ranks = [torch.load(tmp_path / f"ddp_rank{r}.pt", weights_only=False) for r in range(2)]
    # Every rank computes the same ZENITH multiplier at every step ...
    assert len(ranks[0]["multipliers"]) == ITERS
    assert ranks[0]["multipliers"] == ranks[1]["multipliers"]
    assert ranks[0]["multipliers"][-1] < 1.0
    # ... and ends with the same weights.
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    # The gradients are views into DDP's few buckets (no copy of their own), and the
    # norm ZENITH reads from them is that of the averaged gradients.
    for n_grads, n_storages in ranks[0]["grad_storages"]:
        assert n_storages < n_grads / 10
    # The float32 norm of the averaged gradients against their float64 norm: any summation order of
    # n squares is within l2_norm_rel_bound(n), which grows with n, so counting every float tensor
    # element (gradients are fewer) gives a bound that holds.
    n_terms = sum(v.numel() for k, v in ranks[0]["model"].items() if v.is_floating_point())
    for used, exact in ranks[0]["norms"]:
        assert used == pytest.approx(exact, rel=l2_norm_rel_bound(n_terms))

    single_cfg = _ddp_cfg(tiny_cfg, str(tmp_path / "single"))
    single_file = tmp_path / "single.yaml"
    single_file.write_text(single_cfg.dump())
    train_and_save(str(single_file), str(tmp_path / "single_rank{rank}.pt"))
    single = torch.load(tmp_path / "single_rank0.pt", weights_only=False)
    # Same global batch (2 images), same images and flips, no random sampling: the
    # same training up to float summation order and per-process loss means.
    # Stated tolerance: multipliers within 1%, and the weights' total change
    # (w_final - w_init, over all tensors) within 2% in relative L2.
    for a, b in zip(ranks[0]["multipliers"], single["multipliers"]):
        assert a == pytest.approx(b, rel=0.01)
    init = _initial_weights(single_cfg)
    num, den = 0.0, 0.0
    for key, w0 in init.items():
        if not w0.is_floating_point():
            continue
        d_ddp = ranks[0]["model"][key] - w0
        d_single = single["model"][key] - w0
        num += (d_ddp - d_single).pow(2).sum().item()
        den += d_single.pow(2).sum().item()
    assert den > 0
    relative = (num / den) ** 0.5
    print(f"DDP vs single process: weight-change relative L2 {relative:.2e}")
    assert relative < 0.02


def _initial_weights(cfg):
    from zenith_det.data import metadata_from_cfg
    from zenith_det.engine.defaults import seed_all_rng
    from zenith_det.modeling import build_model

    seed_all_rng(cfg.SEED)
    return build_model(cfg, metadata_from_cfg(cfg)).state_dict()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_trains_and_zenith_sees_unscaled_norms(tiny_cfg, dtype):
    cfg = tiny_cfg.clone()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = dtype
    cfg.SOLVER.MAX_ITER = 6
    default_setup(cfg, resume=False)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (trainer.grad_scaler is not None) == (dtype == "float16")
    history = trainer.optimizer.state_dict()["zenith_history"]
    taken, skipped = history["count"].item(), history["skipped"].item()
    # fp16 overflows at GradScaler's initial scale; those steps are skipped, not counted.
    assert taken + skipped == 6 and taken >= 1
    assert skipped == 0 if dtype == "bfloat16" else trainer.grad_scaler.get_scale() < 65536.0
    held = history["norms"][: min(taken, cfg.SOLVER.ZENITH.WINDOW)]
    # Unscaled norms: a scaled one would be thousands of times larger.
    assert (held > 0).all() and (held < 1000).all()
    for value in trainer.model.state_dict().values():
        if value.is_floating_point():
            assert torch.isfinite(value).all()


def test_sigterm_to_the_launcher_stops_both_ranks_with_75_then_resume_finishes(datasets_root, tmp_path):
    """`--num-gpus 2` on the CPU (gloo): SIGTERM to the parent alone reaches both workers."""
    import json
    import signal
    import subprocess
    import sys
    import time

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "run")
    args = [
        sys.executable, os.path.join(repo, "tools", "train_net.py"),
        "--config", os.path.join(repo, "configs", "synthetic", "mask_rcnn_tiny_FPN_zenith_9min.yaml"), "--num-gpus", "2",
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.ZENITH.WINDOW", "5", "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TEST", "()", "LOG_PERIOD", "1", "SOLVER.MAX_ITER", "200", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "OUTPUT_DIR", out,
    ]
    env = dict(os.environ, ZENITH_DATASETS=datasets_root, PYTHONPATH=repo, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.json")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and any(json.loads(line)["iteration"] >= 2 for line in open(metrics) if line.strip()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 75, stderr[-2000:]
    stopped = torch.load(os.path.join(out, open(os.path.join(out, "last_checkpoint")).read()), weights_only=True)
    assert 2 <= stopped["iteration"] < 200
    resumed = subprocess.run(args[:-4] + ["SOLVER.MAX_ITER", str(stopped["iteration"] + 2), "OUTPUT_DIR", out, "--resume"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == stopped["iteration"] + 2
