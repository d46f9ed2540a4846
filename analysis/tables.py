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


# lm-evaluation-harness's four MMLU groups (configs/tasks/mmlu_*.yaml): they partition MMLU's
# 57 subjects, so a sweep over them (one quarter of the questions per run) gives MMLU's acc
# as their question-weighted mean.
MMLU_GROUPS = ("mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other")


def pooled_accuracy(parts):
    """(acc, stderr, n) over disjoint sets of questions from each set's (acc, examples): the
    mean over all n questions, and for that mean of 0/1 scores the sample standard error
    sqrt(p (1 - p) / (n - 1)), which is the acc_stderr lm-eval gives the whole task."""
    n = sum(count for _, count in parts)
    if n < 2:
        return math.nan, math.nan, n
    p = sum(acc * count for acc, count in parts) / n
    return p, math.sqrt(p * (1.0 - p) / (n - 1)), n


def _percent(acc, stderr):
    return "{:.2f} ± {:.2f}".format(100 * acc, 100 * stderr)


def pooled_records(runs, whole="mmlu", parts=MMLU_GROUPS):
    """One record per method label, seed and sweep point (eval.tasks aside) with a complete
    run of any part: each part's acc in % ("-" where it has not run), and the whole's pooled
    acc ± standard error over its questions once every part has; first a "full precision"
    record per sweep point from the runs' _fp metrics."""
    buckets = {}
    for run in runs:
        if run.status != "complete":
            continue
        point = tuple(sorted((k, v) for k, v in run.point.items() if k != "eval.tasks"))
        bucket = buckets.setdefault((run.label, run.seed, point), {})
        for part in parts:
            if part + ".acc" in run.metrics:
                bucket[part] = run.metrics
    records, fp_records = [], {}
    for (label, seed, point), found in buckets.items():
        for suffix, name in (("_fp", "full precision"), ("", label)):
            record = {"label": name, "seed": seed}
            record.update(dict(point))
            cells = []
            for part in parts:
                metrics = found.get(part)
                record[part] = "{:.2f}".format(100 * metrics[part + ".acc" + suffix]) if metrics else "-"
                if metrics:
                    cells.append((metrics[part + ".acc" + suffix], int(metrics[part + ".examples"])))
            acc, stderr, n = pooled_accuracy(cells) if len(cells) == len(parts) else (math.nan, math.nan, 0)
            record[whole] = _percent(acc, stderr) + " ({})".format(n) if n else "-"
            if not suffix:
                records.append(record)
            elif point not in fp_records or len(cells) > len(fp_records[point][1]):
                fp_records[point] = (record, cells)  # the one covering the most parts
    return [record for record, _ in fp_records.values()] + records


if __name__ == "__main__":
    # python3 -m analysis.tables RESULTS_DIR: MMLU pooled from its four groups' runs.
    import sys

    from .load import load_results

    print(markdown(pooled_records(load_results(sys.argv[1]).runs)), end="")
