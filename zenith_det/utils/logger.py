"""Logging to the console (every rank, rank tagged) and to OUTPUT_DIR/log.txt (rank 0)."""
import logging
import os
import sys


class _LogFile(logging.FileHandler):
    """log.txt that a full disk turns off instead of printing a traceback per record.

    The run's next checkpoint or metrics write then stops it with one line naming the folder.
    """

    def handleError(self, record):
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            return super().handleError(record)
        self.setLevel(logging.CRITICAL + 1)
        print(f"warning: {self.baseFilename} can no longer be written ({error.strerror}); "
              "logging to the console only", file=sys.stdout, flush=True)


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
        handler = _LogFile(os.path.join(output_dir, "log.txt"), mode="a")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
