"""One function per figure family; each draws what the results support.

Every function takes a loaded `Results` and returns a list of (file stem, Figure):
empty when the results hold nothing for it (no traces, no sweep, one method...), so
`draw_all` can offer every figure to every results directory and keep the ones that
come back.  Selection is by content, never by experiment name: new methods, traces and
sweeps show up without code changes.
"""

import math
import os

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from . import style
from .style import metric_label, short_key

# Metrics an ablation chart is drawn for, in this order, when the runs have them.
ABLATION_METRICS = ["rel_output_error", "ppl", "sqnr_db"]
# How many panels / bars a figure may hold before it stops being readable.
MAX_PANELS = 12
MAX_BARS = 24
MAX_SITES = 4
SHORT_TRACE = 30  # traces this short (per-pass counts) get markers: a line alone hides single points
LINESTYLES = ["-", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]


def primary_metric(results):
    """The metric sweeps are judged by: perplexity when measured, else output error."""
    names = results.metric_names
    for name in ("ppl", "rel_output_error", "sqnr_db"):
        if name in names:
            return name
    return names[0] if names else None


def _site_prefixes(names, suffix):
    """'' for unprefixed names, 'SITE.' for per-site ones (capped), that end in suffix."""
    prefixes = sorted({name[:-len(suffix)] for name in names
                       if name == suffix or name.endswith("." + suffix)})
    return prefixes[:MAX_SITES]


def _stem(base, prefix):
    return base + ("_" + _safe(prefix.rstrip(".")) if prefix else "")


def _safe(text):
    return "".join(c if c.isalnum() or c in "+-_" else "_" for c in text)


# --- convergence (Fig. 2) -------------------------------------------------------

# A single-pass method has no loss trace; these metrics put it on an optimiser's loss
# scale, tried in order: a metric named `loss`, and the squared relative output error
# (cayley_sgd's loss is ||Q(XR) Q(WR)^T - X W^T||_F^2 / ||X W^T||_F^2).
LOSS_EQUIVALENTS = [("loss", 1, "loss"), ("rel_output_error", 2, "rel_output_error²")]
# How far (relative) an equivalent may sit from the traced runs' own final loss and
# still count as the same quantity.
LOSS_MATCH_TOLERANCE = 0.25


def _metric(run, name, site):
    """A run's metric for the whole run (site '') or for one site of several."""
    metrics = run.site_metrics.get(site, {}) if site else run.metrics
    return metrics.get(name, math.nan)


def _final_loss(run, loss_name, site):
    """What the optimiser ended at: its own evaluation of the final rotation if it
    reports one (final_quant_loss / final_loss), else the last traced value."""
    for name in ("final_quant_loss", "final_loss"):
        value = _metric(run, name, site)
        if math.isfinite(value):
            return value
    return float(run.traces[loss_name].value[-1])


def _loss_equivalent(traced, loss_name, site):
    """(metric, power, text) for the single-pass reference lines, or None when no
    metric agrees with the traced runs' final loss (another optimiser, another loss)."""
    for metric, power, text in LOSS_EQUIVALENTS:
        pairs = [(_metric(run, metric, site) ** power, _final_loss(run, loss_name, site)) for run in traced]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        if pairs and all(abs(a - b) <= LOSS_MATCH_TOLERANCE * max(abs(b), 1e-12) for a, b in pairs):
            return metric, power, text
    return None


def _plot_runs(ax, results, runs, trace_name, colors):
    """One line per run, coloured by label; one legend entry per (label, point) with
    its run count, the mean final value and, for a loss, the tail's oscillation range."""
    by_group = {}
    for run in runs:
        trace = run.traces.get(trace_name)
        if trace is not None and len(trace.value) > 0:
            by_group.setdefault(style.group_name(run), []).append((run, trace))
    values = []
    styles_used = {}
    for name, members in by_group.items():
        # Sweep points of one label share its colour; the line style tells them apart.
        label_of = members[0][0].label
        linestyle = LINESTYLES[styles_used.get(label_of, 0) % len(LINESTYLES)]
        styles_used[label_of] = styles_used.get(label_of, 0) + 1
        final = float(np.mean([trace.value[-1] for _, trace in members]))
        label = "{} ({} run{}, final {:.3g}".format(name, len(members), "s" if len(members) > 1 else "", final)
        site = trace_name.rpartition(".")[0]
        tail = [_metric(run, "loss_tail_range", site) for run, _ in members]
        if trace_name.endswith("loss") and all(math.isfinite(t) for t in tail):
            label += ", tail range {:.2g}".format(float(np.mean(tail)))
        for i, (run, trace) in enumerate(members):
            ax.plot(trace.step, trace.value, color=colors[run.label], lw=1.1, alpha=0.85, ls=linestyle,
                    marker="o" if len(trace.value) <= SHORT_TRACE else None, ms=3,
                    label=label + ")" if i == 0 else None)
            values.extend(trace.value.tolist())
    return values


def _reference_lines(ax, results, traced, loss_name, colors):
    """Horizontal lines where the single-pass methods' loss lies (mean over seeds)."""
    site = loss_name.rpartition(".")[0]
    equivalent = _loss_equivalent(traced, loss_name, site)
    if equivalent is None:
        return []
    metric, power, text = equivalent
    traced_labels = {run.label for run in traced}
    values = []
    for group in results.groups:
        if group.label in traced_labels:
            continue
        samples = [_metric(run, metric, site) ** power for run in group.runs]
        samples = [v for v in samples if math.isfinite(v)]
        if not samples:
            continue
        mean = float(np.mean(samples))
        ax.axhline(mean, color=colors[group.label], ls="--", lw=1.2,
                   label="{} single pass ({} {:.3g})".format(style.group_name(group), text, mean))
        values.append(mean)
    return values


def _rounded_final_marks(ax, traced, loss_name, colors):
    """A star at the last step where a run's traced loss is not what its final rotation
    scores with real rounding (a run trained on a smooth surrogate): final_quant_loss."""
    site = loss_name.rpartition(".")[0]
    by_group = {}
    for run in traced:
        real = _metric(run, "final_quant_loss", site)
        last = float(run.traces[loss_name].value[-1])
        if math.isfinite(real) and abs(real - last) > LOSS_MATCH_TOLERANCE * max(abs(real), 1e-12):
            by_group.setdefault(style.group_name(run), []).append((run, real))
    values = []
    for name, members in by_group.items():
        for i, (run, real) in enumerate(members):
            ax.plot([run.traces[loss_name].step[-1]], [real], marker="*", ms=11, color=colors[run.label],
                    mec="black", ls="none",
                    label="{}: final R with real rounding ({:.3g})".format(name, real) if i == 0 else None)
            values.append(real)
    return values


def convergence(results):
    """Loss and gradient norm against step, one line per traced run (paper Fig. 2)."""
    figures = []
    colors = style.label_colors(results)
    for prefix in _site_prefixes(results.trace_names, "loss"):
        loss = prefix + "loss"
        traced = [run for run in results.runs if loss in run.traces]
        grads = [prefix + g for g in ("grad_norm", "euclid_grad_norm") if prefix + g in results.trace_names]
        panels = [loss] + grads[:1]
        title = "Convergence" + (" — site " + prefix.rstrip(".") if prefix else "")
        fig, axes = style.new_figure(results, title, ncols=len(panels), panel=(5.4, 3.8))
        for ax, name in zip(axes, panels):
            values = _plot_runs(ax, results, traced, name, colors)
            if name == loss:
                values += _reference_lines(ax, results, traced, loss, colors)
                values += _rounded_final_marks(ax, traced, loss, colors)
            ax.set_yscale("log" if style.wants_log(values) else "linear")
            ax.set_xlabel("optimisation step")
            ax.set_ylabel(metric_label(name))
            ax.set_title(metric_label(name).split(" (")[0])
            ax.legend(loc="best")
        figures.append((_stem("convergence", prefix), fig))
    return figures


def traces(results):
    """Every recorded trace in small multiples (lr, orthogonality error, ...); traces
    of a single point (a one-pass method's counts) show nothing over steps and are left out."""
    names = [name for name in results.trace_names
             if any(len(run.traces[name].value) >= 2 for run in results.runs if name in run.traces)][:MAX_PANELS]
    if not names:
        return []
    colors = style.label_colors(results)
    cols, rows = style.grid_shape(len(names))
    fig, axes = style.new_figure(results, "Recorded traces", ncols=cols, nrows=rows, panel=(4.2, 3.0))
    traced = [run for run in results.runs if run.traces]
    for ax, name in zip(axes, names):
        values = _plot_runs(ax, results, traced, name, colors)
        ax.set_yscale("log" if style.wants_log(values) else "linear")
        ax.set_xlabel("step (as the method records it)")
        ax.set_ylabel(metric_label(name))
        ax.set_title(name)
    axes[0].legend(loc="best")
    style.hide_unused(axes, len(names))
    return [("traces", fig)]


# --- bar charts (ablation, outliers, time) --------------------------------------

def _bar_groups(results, metric):
    """Groups that have `metric`, in results order, capped to a readable count."""
    groups = [g for g in results.groups if metric in g.metrics]
    return groups if len(groups) <= MAX_BARS else []


def _bars(ax, results, groups, metric, colors, annotate=True):
    """One bar per group with the standard error over seeds as the error bar."""
    means = [g.mean(metric) for g in groups]
    errs = [g.stderr(metric) for g in groups]
    x = np.arange(len(groups))
    bars = ax.bar(x, means, yerr=errs, capsize=4, color=[colors[g.label] for g in groups],
                  edgecolor="black", linewidth=0.5, error_kw={"elinewidth": 1})
    if annotate:
        for bar, mean, err in zip(bars, means, errs):
            top = mean + (err if math.isfinite(err) else 0.0)
            ax.annotate("{:.3g}".format(mean), (bar.get_x() + bar.get_width() / 2, top),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    names = [style.group_name(g) for g in groups]
    if len(groups) > 4 or max(len(n) for n in names) > 24:
        ax.set_xticks(x, names, rotation=30, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(x, [n.replace(" (", "\n(") for n in names])
    ax.margins(y=0.12)  # room for the value labels above the error bars
    return means


def _stderr_note(groups):
    seeds = max((len(g.runs) for g in groups), default=0)
    return "error bars: standard error over {} seed{}".format(seeds, "s" if seeds != 1 else "")


def ablation(results):
    """One bar per method label (and sweep point) for each headline metric (Table 4).
    A single label over a sweep is the sweep figure's job, not an ablation."""
    if len(results.labels) < 2:
        return []
    colors = style.label_colors(results)
    figures = []
    for metric in ABLATION_METRICS:
        groups = _bar_groups(results, metric)
        if len(groups) < 2:
            continue
        fig, axes = style.new_figure(results, "Ablation: " + metric_label(metric).split(" (")[0],
                                     panel=(max(5.0, 0.9 * len(groups) + 1.5), 4.0))
        ax = axes[0]
        means = _bars(ax, results, groups, metric, colors)
        if style.wants_log(means, ratio=50):
            ax.set_yscale("log")
        ax.set_ylabel(metric_label(metric))
        ax.set_xlabel("method label (sweep point)" if results.varied_keys() else "method label")
        ax.set_title(_stderr_note(groups), fontsize=8)
        figures.append(("ablation_" + metric, fig))
    return figures


def outliers(results):
    """What each rotation did to the outliers: max |x| and kurtosis after vs before."""
    pairs = [("act_absmax", "act_absmax_before"), ("act_kurtosis", "act_kurtosis_before")]
    pairs = [p for p in pairs if p[0] in results.metric_names]
    groups = _bar_groups(results, pairs[0][0]) if pairs else []
    if not groups:
        return []
    colors = style.label_colors(results)
    fig, axes = style.new_figure(results, "Outliers after rotation", ncols=len(pairs),
                                 panel=(max(4.5, 0.8 * len(groups) + 1.5), 3.8))
    for ax, (after, before) in zip(axes, pairs):
        means = _bars(ax, results, groups, after, colors)
        befores = [g.mean(before) for g in groups]
        ax.hlines(befores, np.arange(len(groups)) - 0.45, np.arange(len(groups)) + 0.45,
                  colors="black", linestyles="--", label="before rotation")
        ax.set_yscale("log" if style.wants_log(means + befores, ratio=10) else "linear")
        ax.set_ylabel(metric_label(after))
        ax.set_title(metric_label(after).split(" (")[0] + ": bars after, dashes before", fontsize=8)
        ax.legend(loc="best")
    return [("outliers", fig)]


SPLIT_METRICS = ["rel_output_error", "rel_output_error_outlier_tokens", "rel_output_error_other_tokens"]
SPLIT_NAMES = ["all tokens", "outlier tokens", "other tokens"]


def error_split(results):
    """Where the error is: the output error over all tokens, over the tokens that carry
    massive outliers, and over the rest, side by side per method (issue: one error
    over all tokens hides what ART does for the few outlier tokens). The energy share of
    the outlier tokens is in the title: overall^2 = share*outlier^2 + (1-share)*other^2."""
    if not all(m in results.metric_names for m in SPLIT_METRICS):
        return []
    groups = [g for g in _bar_groups(results, SPLIT_METRICS[1]) if all(m in g.metrics for m in SPLIT_METRICS)]
    if not groups:
        return []
    fig, axes = style.new_figure(results, "Output error: outlier tokens vs the rest",
                                 panel=(max(5.5, 1.2 * len(groups) + 2.0), 4.0))
    ax = axes[0]
    width = 0.8 / len(SPLIT_METRICS)
    x = np.arange(len(groups))
    shades = ["0.35", "tab:red", "tab:blue"]
    for i, (metric, name) in enumerate(zip(SPLIT_METRICS, SPLIT_NAMES)):
        ax.bar(x + (i - 1) * width, [g.mean(metric) for g in groups], width,
               yerr=[g.stderr(metric) for g in groups], capsize=3, color=shades[i],
               edgecolor="black", linewidth=0.5, label=name)
    names = [style.group_name(g) for g in groups]
    ax.set_xticks(x, names, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylabel("relative output error ‖ΔY‖/‖Y‖ (ratio)")
    share = [g.mean("outlier_token_energy_share") for g in groups if "outlier_token_energy_share" in g.metrics]
    note = _stderr_note(groups)
    if share:
        note += "; outlier tokens hold {:.1%} of the output energy".format(float(np.mean(share)))
    ax.set_title(note, fontsize=8)
    ax.legend(loc="best")
    return [("error_split", fig)]


def channels(results):
    """Per-channel max |activation| before and after each method's transform (first seed, the
    site with the largest activation before any transform: where a model's massive outliers
    are): where the outlier channels are, and whether the transform spread them."""
    runs = {}
    for run in results.runs:
        if run.status == "complete" and run.channels and run.label not in runs:
            runs[run.label] = run
    if not runs:
        return []
    first = next(iter(runs.values()))
    site = max(sorted(first.channels),
               key=lambda s: float(np.max(first.channels[s].get("absmax_before", np.zeros(1)))))
    colors = style.label_colors(results)
    fig, axes = style.new_figure(results, "Per-channel max |activation| [{}]".format(site),
                                 panel=(7.0, 4.0))
    ax = axes[0]
    before = next(iter(runs.values())).channels[site].get("absmax_before")
    if before is not None:
        # Drawn on top, dotted: an identity transform's "after" is exactly this line.
        ax.plot(np.arange(before.size), before, color="black", linestyle=":", linewidth=1.0,
                zorder=5, label="before (all methods)")
    for label, run in runs.items():
        after = run.channels.get(site, {}).get("absmax_after")
        if after is not None:
            ax.plot(np.arange(after.size), after, color=colors[label], linewidth=0.8, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("channel index")
    ax.set_ylabel("max |activation| over tokens (act. units)")
    ax.legend(loc="best")
    return [("channels", fig)]


def time(results):
    """Build (and apply) seconds per method label on a log axis (Table 5)."""
    kinds = [m for m in ("build_seconds", "apply_seconds") if m in results.metric_names]
    if "build_seconds" not in kinds:
        return []
    colors = style.label_colors(results)
    labels = results.labels
    fig, axes = style.new_figure(results, "Time per method", panel=(max(5.0, 1.4 * len(labels) + 1.5), 4.0))
    ax = axes[0]
    width = 0.8 / len(kinds)
    floor = 1e-7  # a log axis cannot show 0 s; identity takes ~1 us
    for k, kind in enumerate(kinds):
        stats = [_pooled(results.runs_of(label), kind) for label in labels]
        x = np.arange(len(labels)) + (k - (len(kinds) - 1) / 2) * width
        means = [max(m, floor) for m, _ in stats]
        errs = [s for _, s in stats]
        bars = ax.bar(x, means, width, yerr=errs, capsize=3,
                      color=[colors[label] for label in labels], edgecolor="black", linewidth=0.5,
                      alpha=1.0 if kind == "build_seconds" else 0.45, hatch=None if k == 0 else "//",
                      label=metric_label(kind))
        for bar, mean, err in zip(bars, means, errs):
            ax.annotate(_seconds(mean), (bar.get_x() + bar.get_width() / 2, mean + err), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 30)  # headroom: the legend sits above the tallest bar
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("seconds (log scale)")
    ax.set_xlabel("method label")
    pooled = " (pooled over sweep points)" if results.varied_keys() else ""
    ax.set_title("mean ± standard error over runs" + pooled, fontsize=8)
    ax.legend(handles=[Patch(facecolor="0.45", edgecolor="black", label=metric_label(kinds[0]))] +
              [Patch(facecolor="0.85", edgecolor="black", hatch="//", label=metric_label(k)) for k in kinds[1:]],
              loc="upper left")
    return [("time", fig)]


def _pooled(runs, metric):
    values = [r.metrics[metric] for r in runs if metric in r.metrics]
    if not values:
        return math.nan, 0.0
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _seconds(value):
    """A duration in the unit that keeps three digits readable: 192 µs, 67.3 ms, 1271 s."""
    for scale, unit in ((1e-3, "µs"), (1.0, "ms")):
        if value < scale:
            return "{:.3g} {}".format(value * 1e3 / scale, unit)
    return "{:.3g} s".format(value) if value < 1000 else "{:.0f} s".format(value)


# --- histograms -------------------------------------------------------------------

def _grid_marks(ax, hist, bits, clip, color, style_, name):
    """Mark the range a `bits`-bit grid spans for this distribution: ±clip·max|x|."""
    bound = clip * hist.absmax
    ax.axvline(-bound, color=color, ls=style_, lw=1)
    ax.axvline(bound, color=color, ls=style_, lw=1,
               label="A{} grid range {} (±{:.3g}, step ≤ {:.3g})".format(bits, name, bound,
                                                                           2 * bound / (2 ** bits - 1)))


def _draw_histogram(ax, run, prefix, color):
    """Before (grey, filled) and after (label colour) on a log-count axis."""
    quant = run.config.get("quant") or {}
    bits, clip = int(quant.get("a_bits", 4)), float(quant.get("a_clip", 1.0))
    before, after = run.histograms.get(prefix + "act_before"), run.histograms.get(prefix + "act_after")
    for hist, name, col, fill in ((before, "before", "0.55", True), (after, "after", color, False)):
        if hist is None:
            continue
        counts = np.where(hist.counts > 0, hist.counts, np.nan)
        ax.stairs(counts, hist.edges, fill=fill, color=col, alpha=0.5 if fill else 1.0, lw=1.3,
                  label="{} rotation (max|x| {:.3g})".format(name, hist.absmax))
        if bits < 16:
            _grid_marks(ax, hist, bits, clip, col, ":" if fill else "--", name)
    ax.set_yscale("log")
    ax.set_xlabel("activation value (input units)")
    ax.set_ylabel("count (log scale)")


def histograms(results):
    """Activation distributions before and after each method's rotation."""
    figures = []
    colors = style.label_colors(results)
    for prefix in _site_prefixes(results.histogram_tags, "act_after"):
        groups = [g for g in results.groups if any(prefix + "act_after" in r.histograms for r in g.runs)]
        groups = groups[:MAX_PANELS]
        if not groups:
            continue
        cols, rows = style.grid_shape(len(groups))
        title = "Activations before and after rotation" + (" — site " + prefix.rstrip(".") if prefix else "")
        fig, axes = style.new_figure(results, title, ncols=cols, nrows=rows, panel=(4.8, 3.6))
        for ax, group in zip(axes, groups):
            run = min(group.runs, key=lambda r: r.seed)
            _draw_histogram(ax, run, prefix, colors[group.label])
            ax.set_title("{} (seed {})".format(style.group_name(group), run.seed), fontsize=9)
            ax.legend(loc="upper right", fontsize=6)
        style.hide_unused(axes, len(groups))
        figures.append((_stem("histograms", prefix), fig))
    return figures


# --- sweeps ------------------------------------------------------------------------

def _numeric(values):
    return all(isinstance(v, (int, float)) for v in values)


def _positions(values):
    """x positions: the values themselves when numeric, else 0..n-1 with tick labels."""
    if _numeric(values):
        return {v: float(v) for v in values}, False
    return {v: float(i) for i, v in enumerate(values)}, True


def _series(results, key):
    """Groups that have `key`, split by (label, the other swept values)."""
    series = {}
    for group in results.groups:
        if key not in group.point:
            continue
        rest = {k: v for k, v in group.point.items() if k != key}
        series.setdefault((group.label, tuple(sorted(rest.items()))), []).append(group)
    return series


def _series_styles(series, colors):
    """Colours and line styles for the sweep lines: with one method label the series
    (values of the other swept keys) get a colour ramp; with several, each label keeps
    its colour and its series differ by line style."""
    labels = _ordered_labels(label for (label, _), _ in series)
    if len(labels) == 1 and len(series) > 1:
        ramp = plt.get_cmap("viridis")
        return [ramp(i / (len(series) - 1) * 0.9) for i in range(len(series))], ["-"] * len(series)
    count = {}
    styles = []
    for (label, _), _ in series:
        styles.append(LINESTYLES[count.get(label, 0) % len(LINESTYLES)])
        count[label] = count.get(label, 0) + 1
    return [colors[label] for (label, _), _ in series], styles


def _ordered_labels(labels):
    return list(dict.fromkeys(labels))


def _sweep_panel(ax, results, key, metric, colors):
    """metric against one swept key; runs that do not take the key as dashed lines."""
    from .load import parse_value
    values = results.point_values(key)
    pos, categorical = _positions(values)
    plotted = []
    series = list(_series(results, key).items())[:MAX_PANELS]
    for ((label, rest), groups), color, linestyle in zip(series, *_series_styles(series, colors)):
        groups = sorted(groups, key=lambda g: pos[parse_value(g.point[key])])
        xs = [pos[parse_value(g.point[key])] for g in groups]
        ys = [g.mean(metric) for g in groups]
        extra = style.point_text(dict(rest))
        ax.errorbar(xs, ys, yerr=[g.stderr(metric) for g in groups], color=color, ls=linestyle, marker="o",
                    ms=4, capsize=3, label=label + (" ({})".format(extra) if extra else ""))
        plotted += ys
    for group in results.groups:
        if key not in group.point and metric in group.metrics:
            ax.axhline(group.mean(metric), color=colors[group.label], ls="--", lw=1,
                       label="{} (not swept, {:.3g})".format(style.group_name(group), group.mean(metric)))
            plotted.append(group.mean(metric))
    if categorical:
        ax.set_xticks(list(pos.values()), [str(v) for v in values], rotation=20)
    elif style.wants_log(list(pos.values())):
        ax.set_xscale("log")
    ax.set_yscale("log" if style.wants_log(plotted, ratio=50) else "linear")
    ax.set_xlabel(short_key(key))
    ax.set_ylabel(metric_label(metric))


def sweep(results):
    """A line plot of the headline metric (and build time) over each swept key (Fig. 4)."""
    metric = primary_metric(results)
    if metric is None:
        return []
    colors = style.label_colors(results)
    figures = []
    for key in results.varied_keys():
        panels = [metric] + (["build_seconds"] if "build_seconds" in results.metric_names else [])
        fig, axes = style.new_figure(results, "Sweep over " + short_key(key), ncols=len(panels),
                                     panel=(5.2, 3.8))
        for ax, name in zip(axes, panels):
            _sweep_panel(ax, results, key, name, colors)
            ax.set_title(metric_label(name).split(" (")[0] + " (mean ± s.e. over seeds)", fontsize=8)
        axes[0].legend(loc="best")
        figures.append(("sweep_" + _safe(short_key(key)), fig))
    return figures


def _heatmap_cells(groups, key_a, key_b, values_a, values_b, metric):
    from .load import parse_value
    cells = np.full((len(values_a), len(values_b)), np.nan)
    for g in groups:
        i = values_a.index(parse_value(g.point[key_a]))
        j = values_b.index(parse_value(g.point[key_b]))
        cells[i, j] = g.mean(metric)
    return cells


def _heatmap_panel(ax, cells, values_a, values_b, key_a, key_b, norm, metric):
    image = ax.imshow(cells, cmap="viridis", norm=norm, aspect="auto", origin="lower")
    finite = np.where(np.isfinite(cells), cells, np.inf if metric not in style.HIGHER_IS_BETTER else -np.inf)
    best = np.unravel_index(np.argmax(finite) if metric in style.HIGHER_IS_BETTER else np.argmin(finite),
                            cells.shape)
    for (i, j), value in np.ndenumerate(cells):
        if math.isfinite(value):
            ax.text(j, i, "{:.3g}".format(value), ha="center", va="center", fontsize=7,
                    color="white" if norm(value) < 0.5 else "black",
                    fontweight="bold" if (i, j) == best else "normal")
    ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(values_b)), [str(v) for v in values_b], rotation=20)
    ax.set_yticks(range(len(values_a)), [str(v) for v in values_a])
    ax.set_xlabel(short_key(key_b))
    ax.set_ylabel(short_key(key_a))
    ax.grid(False)
    return image


def _heatmap_norm(cells_list):
    finite = np.concatenate([c[np.isfinite(c)] for c in cells_list])
    low, high = float(finite.min()), float(finite.max())
    if low > 0 and high / low > 20:
        return plt.matplotlib.colors.LogNorm(low, high)
    return plt.Normalize(low, high if high > low else low + 1e-12)


def sweep_map(results):
    """A heatmap of the headline metric over each pair of swept keys, per method label."""
    metric = primary_metric(results)
    keys = results.varied_keys()
    figures = []
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            figure = _sweep_map_pair(results, keys[a], keys[b], metric)
            if figure:
                figures.append(figure)
    return figures


def _sweep_map_pair(results, key_a, key_b, metric):
    """The heatmap figure of one key pair: one panel per (label, other swept values)."""
    panels = {}
    for group in results.groups:
        if key_a in group.point and key_b in group.point and metric in group.metrics:
            rest = {k: v for k, v in group.point.items() if k not in (key_a, key_b)}
            panels.setdefault((group.label, tuple(sorted(rest.items()))), []).append(group)
    panels = list(panels.items())[:MAX_PANELS]
    if not panels:
        return None
    values_a, values_b = results.point_values(key_a), results.point_values(key_b)
    cells = [_heatmap_cells(groups, key_a, key_b, values_a, values_b, metric) for _, groups in panels]
    norm = _heatmap_norm(cells)
    cols, rows = style.grid_shape(len(panels))
    fig, axes = style.new_figure(results, "{} over {} × {}".format(metric_label(metric).split(" (")[0],
                                 short_key(key_a), short_key(key_b)), ncols=cols, nrows=rows,
                                 panel=(max(4.2, 0.9 * len(values_b) + 1.8), max(3.2, 0.6 * len(values_a) + 1.5)))
    for ax, ((label, rest), _), grid in zip(axes, panels, cells):
        image = _heatmap_panel(ax, grid, values_a, values_b, key_a, key_b, norm, metric)
        extra = style.point_text(dict(rest))
        ax.set_title(label + (" ({})".format(extra) if extra else "") + " — red box: best", fontsize=8)
    style.hide_unused(axes, len(panels))
    fig.colorbar(image, ax=axes[:len(panels)], label=metric_label(metric), shrink=0.9)
    return ("sweep_map_{}_x_{}".format(_safe(short_key(key_a)), _safe(short_key(key_b))), fig)


# --- scaling: time against the width n ------------------------------------------

# Swept keys that are the hidden width n of the sites (experiments/scaling.yaml sweeps
# data.channels); the last path component decides.
WIDTH_KEYS = ("channels", "dim", "n", "width")
# Reference slopes drawn next to the measured curves: name, f(n).
REFERENCE_SLOPES = [
    ("O(n²)", lambda n: n ** 2),
    ("O(n^1.5)", lambda n: n ** 1.5),
    ("O(n log n)", lambda n: n * np.log2(n)),
]


def width_key(results):
    """The swept key that is the width n (numeric, at least three values), or None."""
    for key in results.varied_keys():
        values = results.point_values(key)
        if key.split(".")[-1] in WIDTH_KEYS and _numeric(values) and len(values) >= 3:
            return key
    return None


def fit_slope(ns, seconds):
    """Least-squares slope of log(seconds) against log(n): the exponent k of seconds ~ n^k."""
    ns, seconds = np.asarray(ns, dtype=float), np.asarray(seconds, dtype=float)
    keep = (ns > 0) & (seconds > 0) & np.isfinite(seconds)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(ns[keep]), np.log(seconds[keep]), 1)[0])


def _scaling_panel(ax, results, key, metric, colors):
    """metric against n on log-log axes, one line per label (mean over seeds, fitted
    exponent in the legend), and the reference slopes through the curves' median start."""
    from .load import parse_value
    starts, all_ns = [], set()
    for label in results.labels:
        groups = [g for g in results.groups_of(label) if key in g.point and metric in g.metrics]
        groups = sorted(groups, key=lambda g: parse_value(g.point[key]))
        points = [(float(parse_value(g.point[key])), g.mean(metric)) for g in groups if g.mean(metric) > 0]
        if len(points) < 2:
            continue
        ns, ys = zip(*points)
        all_ns.update(ns)
        starts.append((ns[0], ys[0]))
        ax.plot(ns, ys, marker="o", ms=4, color=colors[label],
                label="{} (n^{:.2f})".format(label, fit_slope(ns, ys)))
    if not starts:
        return False
    n0 = min(n for n, _ in starts)
    y0 = float(np.median([y for n, y in starts if n == n0]))
    grid = np.array(sorted(all_ns))
    for (name, f), ls in zip(REFERENCE_SLOPES, LINESTYLES[1:]):
        ax.plot(grid, y0 * f(grid) / f(n0), color="0.55", ls=ls, lw=1, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n ({})".format(short_key(key)))
    ax.set_ylabel(metric_label(metric) + " (log scale)")
    ax.set_title("{}: measured (fitted exponent) and reference slopes".format(metric), fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return True


def scaling(results):
    """Build and apply seconds against the width n, log-log, per method, next to O(n²),
    O(n^1.5) and O(n log n) (experiments/scaling.yaml)."""
    key = width_key(results)
    metrics = [m for m in ("build_seconds", "apply_seconds") if m in results.metric_names]
    if key is None or not metrics:
        return []
    colors = style.label_colors(results)
    fig, axes = style.new_figure(results, "Time against the width n", ncols=len(metrics), panel=(5.2, 4.2))
    drawn = [_scaling_panel(ax, results, key, metric, colors) for ax, metric in zip(axes, metrics)]
    if not any(drawn):
        plt.close(fig)
        return []
    return [("scaling", fig)]


def zero_shot(results):
    """Accuracy per zero-shot task (eval.tasks): a bar per method label and one for the
    full-precision model, the harness's standard error (sample std / sqrt(n)) as the
    error bar, and the mean over the tasks last."""
    tasks = sorted({m[:-4] for m in results.metric_names if m.endswith(".acc")})
    groups = [g for g in results.groups if all(t + ".acc" in g.metrics for t in tasks)]
    if not tasks or not groups:
        return []
    colors = style.label_colors(results)
    # (name, colour, group, suffix): the full-precision scores are in every run as *_fp.
    series = [("full precision", "#bbbbbb", groups[0], "_fp")]
    series += [(style.group_name(g), colors[g.label], g, "") for g in groups]
    names = tasks + ["average"]
    fig, axes = style.new_figure(results, "Zero-shot accuracy per task",
                                 panel=(max(6.0, 0.45 * len(names) * len(series)), 4.0))
    ax = axes[0]
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (name, color, group, suffix) in enumerate(series):
        values = [group.mean(t + ".acc" + suffix) for t in tasks]
        errors = [group.mean(t + ".acc_stderr" + suffix) for t in tasks]
        values.append(float(np.mean(values)))
        errors.append(float("nan"))
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=errors, capsize=2, color=color,
               edgecolor="black", linewidth=0.5, label=name, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, names, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("accuracy (acc)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("error bars: the harness's standard error over the examples", fontsize=8)
    return [("zero_shot", fig)]


# --- registry and drawing --------------------------------------------------------

# Figure family -> function. These names are what `plots: [...]` and `--only` accept.
FIGURES = {
    "convergence": convergence,
    "traces": traces,
    "ablation": ablation,
    "outliers": outliers,
    "error_split": error_split,
    "channels": channels,
    "histograms": histograms,
    "sweep": sweep,
    "sweep_map": sweep_map,
    "time": time,
    "scaling": scaling,
    "zero_shot": zero_shot,
}


def build(results, only=None):
    """Yields (family, stem, Figure) for every figure the results support."""
    for family, function in FIGURES.items():
        if only and family not in only:
            continue
        for stem, fig in function(results):
            yield family, stem, fig


def save(fig, out_dir, stem):
    """Writes stem.png and stem.pdf; returns both paths. Closes the figure."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, "{}.{}".format(stem, ext))
        fig.savefig(path, dpi=style.DPI, metadata={"Creator": "sqlab analysis"} if ext == "pdf" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def draw_all(results, out_dir=None, only=None, on_error=None):
    """Draw every supported figure into out_dir (default RESULTS/figures); returns the paths.

    A figure family that raises is reported through on_error(family, exception) and the
    others are still drawn: one odd run should not cost all the figures.
    """
    out_dir = out_dir or os.path.join(results.path, "figures")
    paths = []
    for family, function in FIGURES.items():
        if only and family not in only:
            continue
        try:
            for stem, fig in function(results):
                paths += save(fig, out_dir, stem)
        except Exception as e:  # noqa: BLE001 - reported, the other figures still come
            plt.close("all")
            if on_error is None:
                raise
            on_error(family, e)
    return paths
