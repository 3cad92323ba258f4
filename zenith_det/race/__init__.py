"""The optimizer race (tools/compare.py): pre-registered suites of arms and seeds, one training
run per process, per-run summaries, the statistics and verdicts, and the report page.

  suite_format.py, suite_loading.py    the suite file: its format, and reading and checking it
  runner.py, run_process.py            running the suite's runs (one process each), resumable
  probes.py, overhead.py, sharpness.py what a run measures besides AP: step costs, memory, flatness
  run_summary.py                       one run's summary file (docs/race/<suite>/)
  stats.py, power.py                   intervals, TOST and power on paired seeds
  paired_runs.py                       the runs as the verdicts read them
  verdict_rules.py, weight_claims.py   the declared rules, claim by claim
  claims_table.py, report_tables.py, report_page.py   the report (docs/RESULTS.md)

Training needs none of it: it imports the library, never the other way round. Its statistics need
scipy, its figures matplotlib (the `analysis` extra).
"""
