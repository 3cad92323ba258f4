#!/usr/bin/env python
"""Race optimizer configs with paired seeds; measure their step costs and flatness; report.

    # the CPU race behind docs/RESULTS.md
    python tools/compare.py --suite configs/compare/suites/cpu.yaml --out output/race --jobs 2 \\
        --report docs/RESULTS.md

    # only rebuild the report from what is on disk
    python tools/compare.py --suite configs/compare/suites/cpu.yaml --out output/race --report docs/RESULTS.md --report-only

A suite file lists the arms (configs/compare/*.yaml, each a config with _BASE_),
the seeds every arm runs with, and the mode: equal iterations, or equal
wall-clock. Each run trains in its own process into OUT/<arm>/seed<k>/; a finished
run is not rerun, a stopped one is resumed (zenith_det/analysis/race.py). Then, in
order: each arm's cost per iteration in interleaved blocks (costs.json), the
top Hessian eigenvalue of the final checkpoints of the suite's `sharpness` arms,
and the report with its verdict per claim (zenith_det/analysis/report.py).
Trailing KEY VALUE pairs apply to every run.
"""
import argparse
import os
import sys

from zenith_det.analysis import race, report
from zenith_det.analysis.overhead import measure_suite_costs
from zenith_det.errors import UserError
from zenith_det.utils.cli import run_guarded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="a suite file (configs/compare/suites/*.yaml)")
    parser.add_argument("--out", default="output/race", help="one folder per run under it")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each gets cores / jobs threads)")
    parser.add_argument("--only", nargs="+", help="train only these arms (the report still covers all)")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    parser.add_argument("--report", help="markdown report to write (figures go beside it, in figures/)")
    parser.add_argument("--report-only", action="store_true", help="train and measure nothing; rebuild the report")
    parser.add_argument("--cost-rounds", type=int, default=5, help="interleaved rounds of the per-iteration cost (0: skip)")
    parser.add_argument("--sharpness-batches", type=int, default=2, help="training batches of the flatness probe")
    parser.add_argument("--sharpness-iters", type=int, default=20, help="power iterations of the flatness probe (0: skip)")
    parser.add_argument("--notes", help="a markdown file added to the report as it is (provenance, say)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    return run_guarded(_run, args)


def _run(args) -> int:
    suite = race.load_suite(args.suite)
    if not args.report_only:
        if args.cost_rounds > 0 and not os.path.exists(os.path.join(args.out, race.COSTS)):
            measure_suite_costs(suite, args.out, rounds=args.cost_rounds, threads=max((os.cpu_count() or 1) // args.jobs, 1),
                                extra=args.opts)
        race.run_suite(suite, args.out, jobs=args.jobs, only=args.only, retry_failed=args.retry_failed, extra=args.opts)
        if args.sharpness_iters > 0:
            race.run_sharpness(suite, args.out, args.sharpness_batches, args.sharpness_iters, jobs=args.jobs)
    if args.report:
        command = "python tools/compare.py " + " ".join(sys.argv[1:])
        notes = ""
        if args.notes:
            try:
                with open(args.notes, encoding="utf-8") as f:
                    notes = f.read()
            except OSError as e:
                raise UserError(f"--notes {args.notes}: cannot read it ({e.strerror})")
        report.write_report(suite, args.out, args.report, command, notes)
        print(f"[race] wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
