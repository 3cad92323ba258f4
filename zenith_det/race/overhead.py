"""Each arm's cost per training iteration, measured side by side in interleaved blocks.

Equal iterations is the race's fair comparison on a noisy machine; what an
iteration costs each optimizer is measured here, apart from the race and in one
process: every arm gets its own copy of the model and the same fixed batch, and
the arms take turns, one block of iterations each, round after round, so a change
in the machine's load hits them alike. The spread of the per-round ratios is the
noise a ratio has to clear.
"""
import os
import statistics
import time
from typing import Dict


def _arm_state(cfg):
    from ..data import metadata_from_cfg
    from ..engine.train_loop import SimpleTrainer
    from ..modeling import build_model
    from ..solver import build_optimizer, optimizer_spec

    from ..engine import resolve_device

    model = build_model(cfg, metadata_from_cfg(cfg)).to(resolve_device(cfg))
    optimizer = build_optimizer(cfg, model)
    # SimpleTrainer gives the optimizer what its spec needs (loss closure, train()/eval()
    # switching, iterate averaging) exactly as in training.
    trainer = SimpleTrainer(model, None, optimizer, spec=optimizer_spec(cfg))
    return trainer


def measure_iteration_costs(configs: Dict[str, object], rounds: int = 5, block: int = 4) -> Dict[str, dict]:
    """{arm: {"iteration_seconds": [per round], "step_seconds": [per round]}} for each config
    (a frozen CfgNode per arm): mean seconds per training iteration (forward, backward,
    step) and per optimizer step (the step, its closure and averaging) in each round.
    The configs must build the same model."""
    from ..data import build_detection_train_loader

    first = next(iter(configs.values()))
    images, targets = next(iter(build_detection_train_loader(first)))
    trainers = {name: _arm_state(cfg) for name, cfg in configs.items()}
    device = next(iter(trainers.values())).device
    images = [img.to(device) for img in images]
    targets = [{k: v.to(device) if hasattr(v, "to") else v for k, v in t.items()} for t in targets]
    # Every block starts from the same weights: what the heads process (proposals, masks)
    # depends on the weights, and arms whose weights drifted apart would differ in
    # forward cost for that reason alone. The optimizers keep their state throughout.
    start_weights = {k: v.clone() for k, v in next(iter(trainers.values())).model.state_dict().items()}
    out = {name: {"iteration_seconds": [], "step_seconds": []} for name in configs}
    for r in range(rounds + 1):  # round 0 warms up every arm and is not kept
        for name, trainer in trainers.items():
            trainer.model.load_state_dict(start_weights)
            step_time, start = 0.0, time.perf_counter()
            for _ in range(block):
                step_time += _one_iteration(trainer, images, targets)
            _sync(trainer.device)
            if r:
                out[name]["iteration_seconds"].append((time.perf_counter() - start) / block)
                out[name]["step_seconds"].append(step_time / block)
    return out


def _one_iteration(trainer, images, targets) -> float:
    """One training iteration on a fixed batch; returns the seconds of its optimizer step."""
    model, optimizer, spec = trainer.model, trainer.optimizer, trainer.optimizer_spec
    if spec.has_eval_weights:
        optimizer.train()
    model.train()
    losses = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    losses.backward()
    _sync(trainer.device)  # on a GPU the step is timed from its launch to its end
    start = time.perf_counter()
    if spec.needs_loss_closure:
        optimizer.step(lambda: float(losses.detach()))
    else:
        optimizer.step()
    if trainer.averager is not None:
        trainer.averager.step()
    _sync(trainer.device)
    return time.perf_counter() - start


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def ratio_summary(costs: Dict[str, dict], peer: str, key: str) -> Dict[str, dict]:
    """Per arm: median seconds, and its ratio to `peer` round by round (median, min, max)."""
    ref = costs[peer][key]
    out = {}
    for name, c in costs.items():
        ratios = [a / b for a, b in zip(c[key], ref) if b > 0]
        out[name] = {"median_seconds": statistics.median(c[key]), "ratio_median": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def within_noise(summary: dict) -> bool:
    """A ratio whose round-to-round range covers 1: the two cost the same within the noise."""
    return summary["ratio_min"] <= 1.0 <= summary["ratio_max"]


def measure_suite_costs(suite, out: str, rounds: int = 5, block: int = 4, threads: int = 1, extra=(), log=print,
                        dest=None) -> dict:
    """The per-iteration cost of each arm of the suite's main and automatic comparisons
    (the first seed's config, at the config's lr: the lr does not change what an iteration
    costs), with `threads` torch threads (a race run's share of the cores), written to
    `dest` (default OUT/costs.json); the peer is the reference arm."""
    import torch

    from ..config import load_config
    from ..utils.fileio import atomic_write_json
    from .runner import COSTS, run_options

    arms = [a for a in suite.arms if a.group in ("main", "automatic")]
    configs = {}
    for arm in arms:
        opts = run_options(suite, arm, arm.seeds[0], out, extra)
        cfg = load_config(arm.config, opts)
        cfg.defrost()
        cfg.MODEL.DEVICE, cfg.DATALOADER.NUM_WORKERS = "cpu" if not torch.cuda.is_available() else cfg.MODEL.DEVICE, 0
        cfg.freeze()
        configs[arm.name] = cfg
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    log(f"[race] cost per iteration of {len(configs)} arms, {rounds} interleaved rounds of {block} iterations, {threads} thread(s)")
    try:
        costs = measure_iteration_costs(configs, rounds=rounds, block=block)
    finally:
        torch.set_num_threads(saved)
    result = {"rounds": rounds, "block": block, "threads": threads, "peer": suite.reference, "costs": costs}
    atomic_write_json(result, dest or os.path.join(out, COSTS), indent=1)
    return result
