"""The `scaling` figure family (experiments/scaling.yaml): time against the width n on
log-log axes with reference slopes; drawn only for a sweep over a width key."""

import math
import tempfile
import unittest

import numpy as np

from analysis import figures, load
from analysis.tests import fixtures

SCALING = """name: fixture_scaling
seeds: [0]
data: {source: synthetic, tokens: 64, channels: 64, out_features: 32, massive: {count: 1, magnitude: 300}}
methods:
  - {label: rtn, method: identity}
  - {label: had, method: hadamard}
  - {label: rot, method: random_orthogonal}
sweep: {grid: {data.channels: [64, 128, 256, 512]}}
record: {histograms: false}
"""


class FitSlope(unittest.TestCase):
    def test_exact_power_laws(self):
        ns = np.array([256, 512, 1024, 4096, 16384])
        for k in (1.0, 1.5, 2.0, 3.0):
            self.assertAlmostEqual(figures.fit_slope(ns, 1e-6 * ns ** k), k, places=9)

    def test_nonpositive_and_short_series(self):
        self.assertAlmostEqual(figures.fit_slope([1, 2, 4, 8], [0.0, 2.0, 4.0, 8.0]), 1.0, places=9)
        self.assertTrue(math.isnan(figures.fit_slope([4], [1.0])))


class ScalingFigure(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.results = load.load_results(fixtures._run_experiment("fixture_scaling", SCALING))

    def test_width_key(self):
        self.assertEqual(figures.width_key(self.results), "data.channels")

    def test_panels_curves_and_reference_slopes(self):
        (stem, fig), = figures.scaling(self.results)
        self.assertEqual(stem, "scaling")
        build, apply_ = fig.axes[:2]
        self.assertEqual((build.get_xscale(), build.get_yscale()), ("log", "log"))
        for ax in (build, apply_):
            labels = [line.get_label() for line in ax.get_lines()]
            for label in ("rtn", "had", "rot"):
                self.assertTrue(any(text.startswith(label + " (n^") for text in labels), labels)
            for name, _ in figures.REFERENCE_SLOPES:
                self.assertIn(name, labels)
            # Reference lines pass through the median first point and have their slope.
            ref = next(line for line in ax.get_lines() if line.get_label() == "O(n²)")
            xs, ys = ref.get_data()
            self.assertEqual(list(xs), [64.0, 128.0, 256.0, 512.0])
            self.assertAlmostEqual(figures.fit_slope(xs, ys), 2.0, places=9)
        figures.plt.close(fig)

    def test_drawn_by_draw_all(self):
        with tempfile.TemporaryDirectory() as out:
            paths = figures.draw_all(self.results, out, only=["scaling"])
        self.assertEqual(sorted(p.rsplit("/", 1)[-1] for p in paths), ["scaling.pdf", "scaling.png"])

    def test_absent_without_a_width_sweep(self):
        results = load.load_results(fixtures.ablation_results())
        self.assertIsNone(figures.width_key(results))
        self.assertEqual(figures.scaling(results), [])


if __name__ == "__main__":
    unittest.main()
