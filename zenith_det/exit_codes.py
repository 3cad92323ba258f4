"""The exit codes of every entry point, in one place (schedulers and scripts act on them)."""

OK = 0
# A mistake in the input: one line on stderr names the file, key or entry and the fix.
USER_ERROR = 2
# Training diverged: non-finite losses for SOLVER.MAX_NONFINITE_STEPS iterations in a row.
DIVERGED = 3
# Stopped by SIGTERM/SIGINT with a resumable state on disk: EX_TEMPFAIL, "requeue with --resume".
PREEMPTED = 75
