"""Training curves from metrics.json files: reading them (metrics_json.py) and the figures
(figures.py), for tools/plot_metrics.py and the race's report. Needs matplotlib (the `plots` extra)."""
