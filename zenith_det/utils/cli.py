"""What every entry point shares: the argument parser and one-line errors."""
import argparse
import logging
import sys

from .. import exit_codes
from ..errors import UserError

USER_ERROR_EXIT_CODE = exit_codes.USER_ERROR
DIVERGED_EXIT_CODE = exit_codes.DIVERGED


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not usage + error) with the same exit code."""

    def parse_args(self, args=None, namespace=None):
        # Flags may come after the KEY VALUE overrides (`... SOLVER.MAX_ITER 10 --resume`).
        return self.parse_intermixed_args(args, namespace)

    def error(self, message):
        self.exit(USER_ERROR_EXIT_CODE, f"error: {message} (see {self.prog} --help)\n")


def default_argument_parser(description: str) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "--config-file", dest="config_file", default="", metavar="FILE", help="YAML config")
    parser.add_argument("--resume", action="store_true", help="continue from the last good checkpoint in OUTPUT_DIR")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS (or, with --resume, the last checkpoint)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to spawn on this machine (not under torchrun or srun)")
    parser.add_argument("--rendezvous-timeout-s", type=positive_seconds, default=600, metavar="S",
                        help="how long the processes of a job (srun tasks, --num-gpus) wait for each other "
                             "to start before giving up with one line (default 600)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--list-optimizers", action="store_true",
                        help="list the SOLVER.OPTIMIZER choices with their descriptions, and exit")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. SOLVER.BASE_LR 0.01")
    return parser


def positive_seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds (a bad one is argparse's one-line error)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite number of seconds")
    return value


# The one line the latest run_guarded printed for a failure (only the latest is kept): a job's task
# reports it to rank 0 (cluster.py).
_last_error = [""]


def last_error() -> str:
    return _last_error[0]


def run_guarded(main, args) -> int:
    """Run `main(args)`, turning known failures into one line on stderr and an exit code."""
    try:
        return main(args) or 0
    except UserError as e:
        if args.debug:
            raise
        _last_error[0] = str(e)
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: stopped at once by a second Ctrl-C; the checkpoints on disk are complete: continue with "
              "--resume", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except FloatingPointError as e:
        if args.debug:
            raise
        logging.getLogger("zenith_det").error("%s", e)
        _last_error[0] = str(e)
        print(f"error: {e}", file=sys.stderr)
        return DIVERGED_EXIT_CODE


def run_tool(run, args, level: int = logging.WARNING) -> int:
    """A tool's main after parsing: logging at `level` (everything with --debug), then run_guarded."""
    logging.basicConfig(level=logging.DEBUG if args.debug else level, format="[%(name)s] %(message)s")
    return run_guarded(run, args)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def finite_positive_float(text: str) -> float:
    value = positive_float(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def score(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a score in [0, 1]")
    return value


def checkpoint_argument_parser(description: str) -> argparse.ArgumentParser:
    """What the tools that use a trained model share: --weights and --debug."""
    parser = OneLineArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, metavar="PTH", help="a checkpoint a training run wrote")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def picture_argument_parser(description: str) -> argparse.ArgumentParser:
    """The arguments the visualizers share: --config, --output, --num, --scale, --debug, KEY VALUE."""
    parser = OneLineArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "--config-file", dest="config_file", required=True, metavar="FILE", help="YAML config")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs (created if absent)")
    parser.add_argument("--num", type=positive_int, default=8, help="images to draw, from the first (default 8)")
    parser.add_argument("--scale", type=finite_positive_float, default=None,
                        help="enlarge the pictures by this factor (default: small images to 512 px on their longest side)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides, e.g. MODEL.WEIGHTS path.pth")
    return parser
