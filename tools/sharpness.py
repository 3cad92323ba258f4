#!/usr/bin/env python
"""Top Hessian eigenvalue of a checkpoint's training loss, next to 2(1 + beta)/eta_final.

    python tools/sharpness.py output/run/model_final.pth [--batches 4] [--iters 100] [--tol 0.02] [--json-out F]

Power iteration with finite-difference Hessian-vector products on the first batches
of the run's own training stream (zenith_det/race/sharpness.py), deterministic,
until the relative residual ||Hv - lambda v|| / |lambda| is at most --tol (or --iters).
"""
import sys

from zenith_det.race.sharpness import checkpoint_sharpness
from zenith_det.utils.cli import OneLineArgumentParser, run_guarded
from zenith_det.utils.fileio import atomic_write_json


def main(argv=None) -> int:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="a checkpoint written by tools/train_net.py")
    parser.add_argument("--batches", type=int, default=4, help="training batches the loss is averaged over")
    parser.add_argument("--iters", type=int, default=100, help="power iterations at most")
    parser.add_argument("--tol", type=float, default=0.02,
                        help="stop when the relative residual ||Hv - lambda v|| / |lambda| is at most this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the result here as json")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    return run_guarded(_run, args)


def _run(args) -> int:
    result = checkpoint_sharpness(args.checkpoint, args.batches, args.iters, args.tol, args.seed)
    lr, implied = result["lr"], result["lr_implied"]
    print(f"{result['checkpoint']} ({result['optimizer']}, iteration {result['iteration']}): "
          f"top Hessian eigenvalue {result['eigenvalue']:.4g} after {len(result['estimates'])} iterations "
          f"on {result['batches']} batches, relative residual {result['residuals'][-1]:.2g} "
          f"({'within' if result['converged'] else 'NOT within'} the tolerance {result['tol']:g}); "
          f"final lr {lr if lr is None else f'{lr:.4g}'}, "
          f"momentum {result['momentum']:g}: 2(1+beta)/eta = {implied if implied is None else f'{implied:.4g}'}")
    if args.json_out:
        atomic_write_json(result, args.json_out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
