#!/usr/bin/env python
"""The largest and smallest Hessian eigenvalues of a checkpoint's training loss, next to 2(1 + beta)/eta_final.

    python tools/sharpness.py output/run/model_final.pth [--batches 4] [--restarts 50] [--tol 0.001] [--json-out F]

Lanczos (ARPACK) on exact Hessian-vector products (RoIAlign made twice differentiable:
zenith_det/race/exact_hvp.py) of the loss on the first batches of the run's own training
stream, deterministic, to a relative tolerance --tol; each eigenvalue is printed with its
residual ||Hu - lambda u|| / |lambda|.
"""
import sys

from zenith_det.race.sharpness import checkpoint_sharpness
from zenith_det.utils.cli import OneLineArgumentParser, run_guarded
from zenith_det.utils.fileio import atomic_write_json


def main(argv=None) -> int:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="a checkpoint written by tools/train_net.py")
    parser.add_argument("--batches", type=int, default=4, help="training batches the loss is averaged over")
    parser.add_argument("--restarts", type=int, default=50, help="Lanczos restarts at most (ARPACK's maxiter)")
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="relative tolerance: the residual ||Hu - lambda u|| / |lambda| it stops at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the result here as json")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    return run_guarded(_run, args)


def _run(args) -> int:
    if args.batches < 1 or args.restarts < 1 or not 0 < args.tol < 1:
        from zenith_det.errors import UserError

        raise UserError(f"--batches {args.batches}, --restarts {args.restarts}, --tol {args.tol:g}: need at least 1 "
                        "batch and 1 restart, and a tolerance in (0, 1)")
    result = checkpoint_sharpness(args.checkpoint, args.batches, args.restarts, args.tol, args.seed)
    lr, implied = result["lr"], result["lr_implied"]
    print(f"{result['checkpoint']} ({result['optimizer']}, iteration {result['iteration']}): "
          f"Hessian eigenvalues from {result['eigenvalue']:.4g} (residual {result['residual_max']:.2g}) down to "
          f"{result['lambda_min']:.4g} (residual {result['residual_min']:.2g}), {result['hvps']} exact "
          f"Hessian-vector products on {result['batches']} batches "
          f"({'within' if result['converged'] else 'NOT within'} the tolerance {result['tol']:g}); "
          f"final lr {lr if lr is None else f'{lr:.4g}'}, "
          f"momentum {result['momentum']:g}: 2(1+beta)/eta = {implied if implied is None else f'{implied:.4g}'}")
    if args.json_out:
        atomic_write_json(result, args.json_out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
