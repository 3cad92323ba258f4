"""Logging to the console (every rank, rank tagged) and to OUTPUT_DIR/log.txt (rank 0)."""
import logging
import os
import sys


def setup_logger(output_dir=None, rank: int = 0, name: str = "zenith_det") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    prefix = f"[rank{rank}] " if rank else ""
    fmt = logging.Formatter(f"[%(asctime)s] {prefix}%(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        logger.addHandler(console)
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(fmt)
        logger.addHandler(console)
    if output_dir:
        handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
