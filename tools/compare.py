#!/usr/bin/env python
"""Race optimizer configs with paired seeds; measure their step costs and flatness; report.

    # the CPU race behind docs/RESULTS.md (resumable: run it again to continue, on this
    # machine or another; a run whose summary is in docs/race/cpu/ is not trained again)
    python tools/compare.py --suite configs/compare/suites/cpu.yaml --out output/race --jobs 2 \\
        --report docs/RESULTS.md

    # only rebuild the report, from the summaries alone (no run folders, nothing trained)
    python tools/compare.py --suite configs/compare/suites/cpu.yaml --report docs/RESULTS.md --report-only

A suite file declares the arms (configs/compare/*.yaml, each a config with _BASE_),
the seeds, how each arm's lr is chosen, and, before anything runs, the primary
metric, alpha, the equivalence margins and the power calculation
(zenith_det/race/suite_format.py). The race trains the lr-tuning stage, then the
comparison at the chosen lrs, each run in its own process into OUT/<arm>/seed<k>/,
and writes each finished run's summary beside the report (the suite's
`summaries`, e.g. docs/race/cpu/; zenith_det/race/runner.py, run_summary.py). Then:
each arm's cost per iteration in interleaved blocks (costs.json), the flatness
probes that did not run with their runs, and the report with its verdict per
claim (zenith_det/race/report_page.py), built from the summaries alone.
Trailing KEY VALUE pairs apply to every run.
"""
import argparse
import os
import shlex
import shutil
import sys

from zenith_det.race import report_page, run_summary, runner
from zenith_det.errors import UserError
from zenith_det.utils.cli import run_guarded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="a suite file (configs/compare/suites/*.yaml)")
    parser.add_argument("--out", default="output/race", help="one folder per run under it")
    parser.add_argument("--summaries", help="the runs' summaries (default: the suite's `summaries`, else OUT/summaries)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each gets cores / jobs threads)")
    parser.add_argument("--only", nargs="+", help="train only these arms (the report still covers all)")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    parser.add_argument("--report", help="markdown report to write (figures go beside it, in figures/)")
    parser.add_argument("--report-only", action="store_true",
                        help="train and measure nothing; rebuild the report from the summaries alone")
    parser.add_argument("--cost-rounds", type=int, default=5, help="interleaved rounds of the per-iteration cost (0: skip)")
    parser.add_argument("--sharpness-iters", type=int, default=None,
                        help="0: skip the flatness probes left over (the suite's `sharpness` declares how they run)")
    parser.add_argument("--notes", help="a markdown file added to the report as it is (provenance, say)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run_guarded(_run, args)


def _run(args) -> int:
    suite = runner.load_suite(args.suite)
    summaries = args.summaries or run_summary.summaries_dir(suite, args.out)
    if args.report_only and not args.report:
        raise UserError("--report-only: give --report PATH, the report to rebuild")
    if not args.report_only:
        from zenith_det.race.overhead import measure_suite_costs

        costs = os.path.join(summaries, run_summary.COSTS)
        if args.cost_rounds > 0 and not os.path.exists(costs):
            if os.path.exists(os.path.join(args.out, run_summary.COSTS)):  # measured before summaries were kept
                os.makedirs(summaries, exist_ok=True)
                shutil.copyfile(os.path.join(args.out, run_summary.COSTS), costs)
            else:
                measure_suite_costs(suite, args.out, rounds=args.cost_rounds, threads=max((os.cpu_count() or 1) // args.jobs, 1),
                                    extra=args.opts, dest=costs)
        runner.run_suite(suite, args.out, jobs=args.jobs, only=args.only, retry_failed=args.retry_failed, extra=args.opts,
                       summaries=summaries)
        if args.sharpness_iters != 0:
            runner.run_sharpness(suite, args.out, jobs=args.jobs, summaries=summaries)
    if args.report:
        command = "python tools/compare.py " + shlex.join(args.argv)
        notes = ""
        if args.notes:
            try:
                with open(args.notes, encoding="utf-8") as f:
                    notes = f.read()
            except OSError as e:
                raise UserError(f"--notes {args.notes}: cannot read it ({e.strerror})")
        report_page.write_report(suite, summaries, args.report, command, notes)
        print(f"[race] wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
