"""The exit codes of every entry point, in one place (schedulers and scripts act on them)."""

OK = 0
# A mistake in the input: one line on stderr names the file, key or entry and the fix.
USER_ERROR = 2
# Training diverged: non-finite losses, or steps skipped for non-finite gradients, SOLVER.MAX_NONFINITE_STEPS in a row.
DIVERGED = 3
# Stopped by SIGTERM/SIGINT/SIGUSR2/SIGHUP with a resumable state on disk: EX_TEMPFAIL, "requeue with --resume".
PREEMPTED = 75
# Stopped at once by a second Ctrl-C (128 + SIGINT, as a shell reports it); any checkpoint being
# written was completed first.
INTERRUPTED = 130
