"""Tables of a loaded results directory, for notebooks and paper drafts.

The same numbers `sqlab show RESULTS_DIR` prints (mean ± standard error over seeds per
label and sweep point), computed from the run files so a notebook needs no binary.
"""

import math

from .style import short_key

HEADLINE = ["rel_output_error", "ppl", "sqnr_db", "act_absmax", "act_kurtosis", "build_seconds"]


def headline_metrics(results):
    """The metrics a summary shows by default: the headline ones the runs have."""
    names = set(results.metric_names)
    return [name for name in HEADLINE if name in names]


def _cell(mean, stderr):
    if not math.isfinite(mean):
        return "-"
    return "{:.4g} ± {:.2g}".format(mean, stderr)


def group_records(results, metrics=None):
    """One dict per (label, sweep point): label, swept values, runs, 'mean ± s.e.' cells."""
    metrics = metrics or headline_metrics(results)
    records = []
    for group in results.groups:
        record = {"label": group.label}
        for key in results.swept_keys:
            record[short_key(key)] = group.point.get(key, "")
        record["runs"] = len(group.runs)
        for name in metrics:
            record[name] = _cell(group.mean(name), group.stderr(name))
        records.append(record)
    return records


def run_records(results, metrics=None):
    """One dict per run: id, label, seed, status, sweep point, metric values."""
    metrics = metrics or headline_metrics(results)
    records = []
    for run in results.runs:
        record = {"run_id": run.run_id, "label": run.label, "seed": run.seed, "status": run.status}
        for key in results.swept_keys:
            record[short_key(key)] = run.point.get(key, "")
        for name in metrics:
            value = run.metrics.get(name, math.nan)
            record[name] = "{:.4g}".format(value) if math.isfinite(value) else "-"
        records.append(record)
    return records


def markdown(records):
    """A Markdown table of records (dicts with the same keys)."""
    if not records:
        return ""
    columns = list(records[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        lines.append("| " + " | ".join(str(record[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"
