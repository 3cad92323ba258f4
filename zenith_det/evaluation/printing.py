"""Evaluation results as detectron2-like text tables, and as strict json."""
import itertools
import math
from typing import Dict, Mapping

try:  # an fvcore dependency, so normally present; the fallback keeps printing dependency-free
    from tabulate import tabulate
except ImportError:  # pragma: no cover
    tabulate = None

_SUMMARY_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"


def _table(header, rows) -> str:
    if tabulate is not None:
        return tabulate(rows, headers=header, tablefmt="pipe", stralign="center", numalign="center", disable_numparse=True)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).center(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join(":" + "-" * w + ":" for w in widths) + "|"] + [line(r) for r in rows])


def format_results_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One header row (task, AP, AP50, AP75, APs, APm, APl) and one row of numbers per task.

    Metrics a task does not have (APs for keypoints) show as "-"; NaN (no
    ground truth in that area range) as "nan".
    """
    if not results:
        return "(no results)"
    header = ["task", *_SUMMARY_COLUMNS]
    rows = [[task, *(_fmt(metrics.get(c)) for c in _SUMMARY_COLUMNS)] for task, metrics in results.items()]
    return _table(header, rows)


def format_per_category_table(task_results: Mapping[str, float], ncols: int = 6) -> str:
    """detectron2's per-category AP table: (category, AP) pairs laid out ncols/2 per row."""
    pairs = [(k[len("AP-"):], _fmt(v)) for k, v in task_results.items() if k.startswith("AP-")]
    if not pairs:
        return ""
    ncols = min(ncols, 2 * len(pairs))
    flat = list(itertools.chain(*pairs))
    rows = itertools.zip_longest(*[flat[i::ncols] for i in range(ncols)], fillvalue="")
    return _table(["category", "AP"] * (ncols // 2), list(rows))


def jsonable_results(results: Mapping[str, Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """The results with NaN as None: json.dump would write NaN, which strict json parsers reject."""
    return {
        task: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        for task, metrics in results.items()
    }
