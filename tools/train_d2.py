#!/usr/bin/env python
"""detectron2's train_net with ZENITH: SOLVER.OPTIMIZER, ZENITH's metrics, a wall-clock budget.

    python tools/train_d2.py --config-file configs/detectron2/synthetic/mask_rcnn_R_18_FPN_zenith_500iter.yaml
    python tools/train_d2.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_zenith_24h.yaml --num-gpus 8
    python tools/train_d2.py --config-file ... --resume            # after a stop or a crash
    python tools/train_d2.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python tools/train_d2.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_zenith_24h.py   # LazyConfig

Arguments are detectron2's (default_argument_parser: --num-gpus, --num-machines,
--dist-url, ... and KEY VALUE overrides). A .yaml config is a detectron2 yacs config
with zenith_det's keys added (SOLVER.OPTIMIZER, SOLVER.ZENITH.*, SOLVER.MAX_TIME_HOURS,
DATASETS.REGISTER) and trains with ZenithTrainer; a .py config is a LazyConfig.
The synthetic datasets and DATASETS.REGISTER entries are registered in detectron2's
catalogs; evaluation is detectron2's COCOEvaluator.

detectron2 is not on PyPI; see docs/detectron2.md, 'Installing detectron2'. Exit codes: 0 done, 2 bad input
(one line says what to fix, detectron2 missing included).
"""
import logging
import os
import sys

INSTALL_HINT = ("tools/train_d2.py needs detectron2, which is not installed (it is not on PyPI): with torch "
                "installed, python -m pip install 'setuptools<81' wheel && python -m pip install --no-build-isolation "
                "'git+https://github.com/facebookresearch/detectron2.git' (docs/detectron2.md, 'Installing detectron2')")

logger = logging.getLogger("detectron2")


# ---------------------------------------------------------------- yacs configs

def setup(args):
    from detectron2.config import get_cfg
    from detectron2.engine import default_setup

    import zenith_det.detectron2 as zd2

    cfg = get_cfg()
    zd2.add_zenith_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    zd2.register_datasets(cfg)
    return cfg


def main(args):
    import zenith_det.detectron2 as zd2

    zd2.register()  # so that anything building a DefaultTrainer here gets SOLVER.OPTIMIZER too
    if args.config_file.endswith(".py"):
        return lazy_main(args)
    cfg = setup(args)
    if args.eval_only:
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.evaluation import verify_results
        from detectron2.utils import comm

        model = zd2.ZenithTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = zd2.ZenithTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = zd2.ZenithTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


# ---------------------------------------------------------------- LazyConfig

def _lazy_dataset_names(cfg):
    names = []
    for split in ("train", "test"):
        dataset = cfg.dataloader.get(split, {}).get("dataset", {})
        value = dataset.get("names", []) if hasattr(dataset, "get") else []
        names.extend([value] if isinstance(value, str) else list(value))
    return names


def lazy_test(cfg, model):
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    if "evaluator" in cfg.dataloader:
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        print_csv_format(results)
        return results


def lazy_main(args):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    import zenith_det.detectron2 as zd2
    from zenith_det.data import SYNTHETIC_DATASETS

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    zd2.register_synthetic_datasets([n for n in _lazy_dataset_names(cfg) if n in SYNTHETIC_DATASETS])

    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    if args.eval_only:
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return lazy_test(cfg, model)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, instantiate(cfg.dataloader.train), optimizer
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    budget = zd2.WallClockBudget(float(cfg.train.get("max_time_hours", 0.0)) * 3600)
    log_period = cfg.train.log_period
    trainer.register_hooks([
        budget,  # first: see WallClockBudget
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: lazy_test(cfg, model)),
        zd2.ZenithMetricsHook(cfg.train.get("zenith_log_period", log_period)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    zd2.train_within_budget(trainer.train, start_iter, cfg.train.max_iter)


# ---------------------------------------------------------------- entry point

def guarded_main(args):
    from zenith_det.errors import UserError

    try:
        return main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cli(argv=None) -> int:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    from detectron2.engine import default_argument_parser, launch

    args = default_argument_parser(epilog=__doc__).parse_args(argv)
    if not args.config_file:
        print("error: --config-file is required, e.g. configs/detectron2/synthetic/mask_rcnn_R_18_FPN_zenith_500iter.yaml",
              file=sys.stderr)
        return 2
    if not os.path.isfile(args.config_file):
        print(f"error: --config-file {args.config_file} not found", file=sys.stderr)
        return 2
    print("Command Line Args:", args)
    launch(
        guarded_main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
