"""Shared look of sqlab's figures: backend, fonts, colours, captions, axis labels.

Kept apart from figures.py so that every figure gets the same caption line, the same
colour for a method label, and fonts that venues accept (Type 42 in PDF).
"""

import math
import sys
import textwrap

import matplotlib

if "ipykernel" not in sys.modules:
    # Figures are files: never open a window (headless CI too). In a notebook keep
    # Jupyter's inline backend so figures show under their cells.
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 150
PANEL = (4.8, 3.6)     # inches per panel
CAPTION_LINE = 0.13    # inches per caption line (6.5 pt text)
CAPTION_CHARS_PER_INCH = 18
TITLE_HEIGHT = 0.3     # inches the figure title takes above the panels

plt.rcParams.update({
    "pdf.fonttype": 42,  # TrueType (Type 42) fonts in PDF: accepted by paper venues
    "ps.fonttype": 42,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": DPI,
})

# Axis labels with units for the metrics sqlab records (contract.md metric names).
METRIC_LABELS = {
    "rel_output_error": "relative output error ‖ΔY‖/‖Y‖ (ratio)",
    "ppl": "perplexity (ratio, lower is better)",
    "sqnr_db": "SQNR (dB)",
    "act_mse": "activation MSE (squared act. units)",
    "weight_mse": "weight MSE (squared weight units)",
    "act_absmax": "max |activation| (act. units)",
    "act_kurtosis": "activation kurtosis (unitless)",
    "invariance_error": "invariance error ‖XRRᵀWᵀ−XWᵀ‖/‖XWᵀ‖",
    "rel_output_error_outlier_tokens": "relative output error on outlier tokens (ratio)",
    "rel_output_error_other_tokens": "relative output error on other tokens (ratio)",
    "outlier_token_energy_share": "share of output energy in outlier tokens (ratio)",
    "build_seconds": "build time (s)",
    "apply_seconds": "apply time (s)",
    "loss": "loss",
    "grad_norm": "gradient norm",
    "euclid_grad_norm": "Euclidean gradient norm",
    "lr": "learning rate",
    "orth_error": "orthogonality error ‖RᵀR−I‖",
}

# Metrics where a larger value is better; for the rest smaller is better.
HIGHER_IS_BETTER = {"sqnr_db"}


def metric_label(name):
    """Axis label with unit for a metric or trace name (site prefix kept in front)."""
    site, _, base = name.rpartition(".")
    text = METRIC_LABELS.get(base, base.replace("_", " "))
    return "{} [{}]".format(text, site) if site else text


def short_key(key):
    """`methods.art+urt.outlier_threshold` -> `outlier_threshold`, for narrow labels."""
    return key.rsplit(".", 1)[-1]


def point_text(point, skip=()):
    """`threshold=5, kron=[32, 32]` for a sweep point (keys shortened)."""
    return ", ".join("{}={}".format(short_key(k), v) for k, v in sorted(point.items()) if k not in skip)


def group_name(group, skip=()):
    """A group's legend text: its label, and its sweep point when it has one."""
    text = point_text(group.point, skip)
    return "{} ({})".format(group.label, text) if text else group.label


def label_colors(results):
    """One colour per method label, the same in every figure of the results."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(results.labels)}


def wants_log(values, ratio=20.0):
    """Log scale when the positive values span more than `ratio` (else linear is clearer)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return False
    return max(finite) / min(finite) > ratio


def _flow(value):
    if isinstance(value, dict):
        return "{" + ", ".join("{}: {}".format(k, _flow(v)) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def data_text(data, limit=240):
    """The data source in one short phrase: source first, then its main settings."""
    if not isinstance(data, dict):
        return str(data)
    parts = [str(data.get("source", "?"))]
    parts += ["{}={}".format(k, _flow(v)) for k, v in data.items() if k != "source"]
    text = " ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def quant_text(quant):
    """`W4A4 (w sym per_channel, a asym per_token)`: the setting as papers write it."""
    quant = quant or {}
    w_bits, a_bits = quant.get("w_bits", 4), quant.get("a_bits", 4)
    name = "W{}A{}".format(w_bits, a_bits)

    def side(prefix, sym_default, granularity_default):
        sym = "sym" if quant.get(prefix + "sym", sym_default) else "asym"
        text = "{} {} {}".format(prefix[0], sym, quant.get(prefix + "granularity", granularity_default))
        clip = quant.get(prefix + "clip", 1.0)
        return text + (" clip={}".format(clip) if clip != 1.0 else "")

    return "{} ({}, {})".format(name, side("w_", True, "per_channel"), side("a_", False, "per_token"))


def caption(results):
    """The caption line every figure carries: experiment, data, quantization, seeds, sweep."""
    config = results.config
    seeds = sorted({run.seed for run in results.runs})
    parts = ["experiment: {}".format(results.name),
             "data: {}".format(data_text(config.get("data", {}))),
             "quant: {}".format(quant_text(config.get("quant"))),
             "seeds: {}".format(len(seeds))]
    swept = results.varied_keys()
    if swept:
        parts.append("swept: " + ", ".join(short_key(k) for k in swept))
    return "  ·  ".join(parts)


def new_figure(results, title, ncols=1, nrows=1, panel=PANEL):
    """A figure of ncols x nrows panels with the title on top and the caption below.

    Its pixel size is exactly (ncols * panel + margins) * DPI: no tight bounding box,
    so tests and papers can rely on the size.  The caption wraps to the figure width.
    """
    width = panel[0] * ncols
    lines = textwrap.wrap(caption(results), int(width * CAPTION_CHARS_PER_INCH)) or [""]
    caption_height = 0.08 + CAPTION_LINE * len(lines)
    height = panel[1] * nrows + caption_height + TITLE_HEIGHT
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")
    fig.get_layout_engine().set(rect=(0, caption_height / height, 1, 1 - caption_height / height))
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.text(0.005, 0.04 / height, "\n".join(lines), fontsize=6.5, color="0.3", ha="left", va="bottom",
             linespacing=1.2)
    return fig, list(axes.flat)


def hide_unused(axes, used):
    """Blank the panels of a grid that have nothing to show."""
    for ax in axes[used:]:
        ax.set_visible(False)


def grid_shape(count, max_cols=3):
    cols = min(count, max_cols)
    return cols, int(math.ceil(count / cols))
