"""Read a sqlab results directory (contract.md, "Results directory" and "Run file").

Everything here reads the documented layout only, so what works in a notebook works
on any results directory, old or new.  Rotations are read on demand: they can be
large, and no figure needs them.
"""

import json
import math
import os
from dataclasses import dataclass, field

import h5py
import numpy as np
import yaml

from . import rotations


class ResultsError(Exception):
    """The directory is not a readable sqlab results directory."""


@dataclass
class Trace:
    """A recorded optimisation curve: `value[i]` at `step[i]`."""
    step: np.ndarray
    value: np.ndarray


@dataclass
class Histogram:
    """Counts of activation values in B equal bins (B + 1 edges)."""
    edges: np.ndarray
    counts: np.ndarray

    @property
    def centers(self):
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def absmax(self):
        """Largest |value| in the data: sqlab's bins span [-max|x|, max|x|]."""
        return float(max(abs(self.edges[0]), abs(self.edges[-1])))


@dataclass
class Run:
    """One run file: a method entry at one sweep point and one seed."""
    run_id: str
    label: str
    method: str
    seed: int
    status: str
    path: str
    attrs: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    point: dict = field(default_factory=dict)  # swept key -> flow-YAML text
    metrics: dict = field(default_factory=dict)
    site_metrics: dict = field(default_factory=dict)  # site -> name -> value
    traces: dict = field(default_factory=dict)  # name -> Trace
    histograms: dict = field(default_factory=dict)  # tag -> Histogram
    timing: dict = field(default_factory=dict)
    rotation_sites: list = field(default_factory=list)
    channels: dict = field(default_factory=dict)  # site -> name -> per-channel array

    def rotation_factors(self, site):
        """The tensors stored for `site`'s rotation ({name: array}); analysis.rotations
        says which form they are and rebuilds R or applies it."""
        with h5py.File(self.path, "r") as f:
            return {name: np.asarray(data[()]) for name, data in f["rotations"][site].items()}

    def rotation(self, site):
        """The dense rotation of `site` (x -> x @ R), from whichever form it was stored in
        (analysis.rotations); T for a transform that is not orthogonal, whose weights map
        by T_w = T^-T.  n^2 * 8 bytes: use rotations.apply for large n."""
        return rotations.dense(self.rotation_factors(site))

    @property
    def warnings(self):
        text = self.attrs.get("warnings", "")
        return [line for line in text.splitlines() if line]


@dataclass
class Group:
    """The runs of one (label, sweep point): mean and standard error over seeds."""
    label: str
    point: dict
    runs: list
    metrics: dict  # name -> (mean, stderr)

    def mean(self, metric):
        return self.metrics.get(metric, (math.nan, math.nan))[0]

    def stderr(self, metric):
        return self.metrics.get(metric, (math.nan, math.nan))[1]


@dataclass
class Results:
    """A loaded results directory."""
    path: str
    name: str
    config: dict
    swept_keys: list
    runs: list
    groups: list
    summary: dict

    @property
    def labels(self):
        """Method labels in the experiment's order (the order of `methods:`)."""
        return _ordered(run.label for run in self.runs)

    def runs_of(self, label):
        return [run for run in self.runs if run.label == label]

    def groups_of(self, label):
        return [group for group in self.groups if group.label == label]

    @property
    def metric_names(self):
        return sorted({name for run in self.runs for name in run.metrics})

    @property
    def trace_names(self):
        return sorted({name for run in self.runs for name in run.traces})

    @property
    def histogram_tags(self):
        return sorted({tag for run in self.runs for tag in run.histograms})

    @property
    def sites(self):
        """Site names when runs have several sites (else an empty list)."""
        return _ordered(site for run in self.runs for site in run.site_metrics)

    def point_values(self, key):
        """The distinct values a swept key takes, as parsed YAML: in the order the
        experiment lists them (so [16, 256] comes before [128, 32]), else sorted."""
        texts = _ordered(g.point[key] for g in self.groups if key in g.point)
        listed = _sweep_lists(self.config).get(key, [])

        def order(text):
            value = _load_flow(text)
            return (listed.index(value), _sort_key(text)) if value in listed else (len(listed), _sort_key(text))

        return [parse_value(t) for t in sorted(texts, key=order)]

    def varied_keys(self):
        """Swept keys that take at least two values."""
        return [key for key in self.swept_keys if len(self.point_values(key)) >= 2]


def parse_value(text):
    """A swept value from its flow-YAML text: a number where it is one, else the text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return text
    return value


def _load_flow(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _sort_key(value):
    """Numbers numerically, lists of numbers element-wise, other text alphabetically."""
    value = _load_flow(value) if isinstance(value, str) else value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, ())
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return (1, 0, tuple(value))
    return (2, 0, (str(value),))


def _sweep_lists(config):
    """Swept key -> its values as the experiment's `sweep:` lists them (grid and zip)."""
    sweep = config.get("sweep") or {}
    lists = {}
    for part in ("grid", "zip"):
        block = sweep.get(part) or {}
        if isinstance(block, dict):
            lists.update({key: values for key, values in block.items() if isinstance(values, list)})
    return lists


def _ordered(items):
    """Distinct items in first-seen order."""
    seen = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr(value):
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _point_key(point):
    """Sorts sweep points numerically where their values are numbers (5 before 10)."""
    return [(key, _sort_key(parse_value(text))) for key, text in sorted(point.items())]


def _scalars(group):
    return {name: float(group[name][()]) for name in group} if group is not None else {}


def _read_traces(f):
    traces = {}
    for name, group in f.get("traces", {}).items():
        traces[name] = Trace(np.asarray(group["step"][()]), np.asarray(group["value"][()], dtype=float))
    return traces


def _read_histograms(f):
    hists = {}
    for tag, group in f.get("histograms", {}).items():
        hists[tag] = Histogram(np.asarray(group["edges"][()], dtype=float),
                               np.asarray(group["counts"][()], dtype=float))
    return hists


def _read_channels(sites):
    """Per-channel arrays under /sites/SITE/channels (e.g. absmax_before, absmax_after)."""
    channels = {}
    for site, group in sites.items():
        if "channels" in group:
            channels[site] = {name: np.asarray(data[()], dtype=float) for name, data in group["channels"].items()}
    return channels


def load_run(path, point=None):
    """Read one run file (everything but the rotation matrices)."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {key: _attr(value) for key, value in f.attrs.items()}
            config_text = _text(f["config"][()]) if "config" in f else ""
            sites = f.get("sites", {})
            return Run(
                run_id=_text(attrs.get("run_id", os.path.basename(path)[:-3])),
                label=_text(attrs.get("label", "")),
                method=_text(attrs.get("method", "")),
                seed=int(attrs.get("seed", 0)),
                status=_text(attrs.get("status", "")),
                path=path,
                attrs=attrs,
                config=yaml.safe_load(config_text) or {},
                point=dict(point or {}),
                metrics=_scalars(f.get("metrics")),
                site_metrics={site: _scalars(g.get("metrics")) for site, g in sites.items()},
                traces=_read_traces(f),
                histograms=_read_histograms(f),
                timing=_scalars(f.get("timing")),
                rotation_sites=list(f.get("rotations", {}).keys()),
                channels=_read_channels(sites),
            )
    except (OSError, KeyError) as e:
        raise ResultsError("{}: not a readable sqlab run file ({})".format(path, e)) from e


def _read_summary(path):
    summary_path = os.path.join(path, "summary.json")
    if not os.path.exists(summary_path):
        return {}
    with open(summary_path, encoding="utf-8") as f:
        return json.load(f)


def _read_config(path):
    config_path = os.path.join(path, "config.yaml")
    if not os.path.exists(config_path):
        return {}
    with open(config_path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _label_order(config):
    methods = config.get("methods") or []
    return [m.get("label", m.get("method")) for m in methods if isinstance(m, dict)]


def _stats(values):
    """Mean and standard error (sample sd / sqrt(n)), as summary.json computes them."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
    return mean, stderr


def group_runs(runs):
    """Groups of complete runs by (label, point), in first-seen order."""
    buckets = {}
    for run in runs:
        if run.status != "complete":
            continue
        key = (run.label, tuple(sorted(run.point.items())))
        buckets.setdefault(key, []).append(run)
    groups = []
    for (label, point), members in buckets.items():
        names = _ordered(name for run in members for name in run.metrics)
        metrics = {name: _stats([r.metrics[name] for r in members if name in r.metrics]) for name in names}
        groups.append(Group(label, dict(point), members, metrics))
    return groups


def load_results(path):
    """Load a results directory: its config, every run file, and the groups over seeds.

    Sweep points come from summary.json (the run files store the resolved
    configuration, not which keys were swept).  Raises ResultsError when the
    directory or its run files are missing.
    """
    if not os.path.isdir(path):
        raise ResultsError("{}: no such results directory".format(path))
    runs_dir = os.path.join(path, "runs")
    files = sorted(f for f in os.listdir(runs_dir) if f.endswith(".h5")) if os.path.isdir(runs_dir) else []
    if not files:
        raise ResultsError("{}: no run files in {}/runs (is this a sqlab results directory?)".format(path, path))
    summary = _read_summary(path)
    config = _read_config(path)
    points = {r["run_id"]: r.get("point", {}) for r in summary.get("runs", [])}
    runs = [load_run(os.path.join(runs_dir, f), points.get(f[:-3])) for f in files]
    order = _ordered(_label_order(config) + [r.get("label") for r in summary.get("runs", [])])
    rank = {label: i for i, label in enumerate(order)}
    runs.sort(key=lambda r: (rank.get(r.label, len(rank)), r.label, _point_key(r.point), r.seed))
    return Results(
        path=path,
        name=summary.get("name") or config.get("name") or os.path.basename(os.path.abspath(path)),
        config=config,
        swept_keys=list(summary.get("swept_keys", [])),
        runs=runs,
        groups=group_runs(runs),
        summary=summary,
    )
