"""Every figure family: drawn when the results support it, absent when they don't,
and each file a decodable, correctly sized, non-blank PNG plus a Type 42 PDF.

Each fixture's figures are drawn once (setUpClass) and the tests inspect the files.
"""

import os
import shutil
import tempfile
import unittest

import matplotlib.image

from analysis import figures, load, style
from analysis.tests import fixtures

# A blank (white) image has variance 0; any drawn figure is far above this.
MIN_PIXEL_VARIANCE = 1e-3


class DrawnFigures(unittest.TestCase):
    """Draws every figure of `results_dir()` once; tests look them up by stem."""
    results_dir = None

    @classmethod
    def setUpClass(cls):
        cls.results = load.load_results(cls.results_dir())
        cls.out = tempfile.mkdtemp(dir=fixtures.temp_root())
        cls.drawn = {}  # stem -> (family, expected (height, width) in pixels, png, pdf)
        for family, stem, fig in figures.build(cls.results):
            width, height = fig.get_size_inches() * style.DPI
            png, pdf = figures.save(fig, cls.out, stem)
            cls.drawn[stem] = (family, (round(height), round(width)), png, pdf)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.out, ignore_errors=True)

    def stems(self, family):
        return sorted(stem for stem, entry in self.drawn.items() if entry[0] == family)

    def check_files(self, family, expected_stems):
        self.assertEqual(self.stems(family), sorted(expected_stems))
        for stem in expected_stems:
            _, size, png, pdf = self.drawn[stem]
            image = matplotlib.image.imread(png)
            # matplotlib truncates inches x dpi to whole pixels: allow that one pixel.
            self.assertLessEqual(max(abs(a - b) for a, b in zip(image.shape[:2], size)), 1, (stem, image.shape, size))
            self.assertGreater(float(image[..., :3].var()), MIN_PIXEL_VARIANCE, stem + " looks blank")
            with open(pdf, "rb") as f:
                data = f.read()
            self.assertTrue(data.startswith(b"%PDF"), stem)
            self.assertNotIn(b"/Type3", data, stem + ": Type 3 fonts in the PDF")
            self.assertIn(b"/FontFile2", data, stem + ": no embedded TrueType (Type 42) font")


class AblationFigures(DrawnFigures):
    results_dir = staticmethod(fixtures.ablation_results)

    def test_convergence(self):
        self.check_files("convergence", ["convergence"])

    def test_convergence_has_single_pass_reference_lines(self):
        (_, fig), = figures.convergence(self.results)
        loss_axes = fig.axes[0]
        labels = [line.get_label() for line in loss_axes.get_lines()]
        self.assertTrue(any(label.startswith("rtn single pass (rel_output_error²") for label in labels), labels)
        self.assertEqual(len(fig.axes), 2)  # loss and gradient norm
        figures.plt.close(fig)

    def test_traces(self):
        self.check_files("traces", ["traces"])

    def test_ablation(self):
        self.check_files("ablation", ["ablation_rel_output_error", "ablation_sqnr_db"])

    def test_outliers_histograms_time(self):
        self.check_files("outliers", ["outliers"])
        self.check_files("histograms", ["histograms"])
        self.check_files("time", ["time"])

    def test_error_split_and_channels(self):
        self.check_files("error_split", ["error_split"])
        self.check_files("channels", ["channels"])

    def test_error_split_parts_recombine(self):
        # overall^2 = share * outlier^2 + (1 - share) * other^2, per run: the figure's three
        # bars are one decomposition, not three unrelated numbers.
        for run in self.results.runs:
            m = run.metrics
            share = m["outlier_token_energy_share"]
            recombined = share * m["rel_output_error_outlier_tokens"] ** 2 + \
                (1 - share) * m["rel_output_error_other_tokens"] ** 2
            self.assertAlmostEqual(recombined, m["rel_output_error"] ** 2, places=6)

    def test_channels_loaded_per_site(self):
        run = self.results.runs[0]
        site = sorted(run.channels)[0]
        self.assertEqual(run.channels[site]["absmax_before"].shape, (32,))
        self.assertEqual(run.channels[site]["absmax_after"].shape, (32,))
        # The synthetic site plants a massive outlier of magnitude 300 (fixture): it is
        # the largest channel absmax before any transform.
        self.assertGreaterEqual(run.channels[site]["absmax_before"].max(), 300 * 0.99)

    def test_no_sweep_figures_without_a_sweep(self):
        self.assertEqual(self.stems("sweep") + self.stems("sweep_map"), [])

    def test_caption_names_experiment_data_quant(self):
        text = style.caption(self.results)
        for part in ("experiment: fixture_ablation", "data: synthetic", "W4A4", "seeds: 2"):
            self.assertIn(part, text)


class SweepFigures(DrawnFigures):
    results_dir = staticmethod(fixtures.sweep_results)

    def test_sweep_lines_per_key(self):
        self.check_files("sweep", ["sweep_a_bits", "sweep_magnitude"])

    def test_sweep_map(self):
        self.check_files("sweep_map", ["sweep_map_a_bits_x_magnitude"])

    def test_no_convergence_without_traces(self):
        self.assertEqual(self.stems("convergence") + self.stems("traces"), [])

    def test_caption_names_the_swept_keys(self):
        self.assertIn("swept: a_bits, magnitude", style.caption(self.results))


class DrawAll(unittest.TestCase):
    def test_only_restricts_families(self):
        results = load.load_results(fixtures.ablation_results())
        with tempfile.TemporaryDirectory() as out:
            paths = figures.draw_all(results, out, only=["time"])
            self.assertEqual(sorted(os.path.basename(p) for p in paths), ["time.pdf", "time.png"])

    def test_a_failing_family_is_reported_and_the_rest_drawn(self):
        results = load.load_results(fixtures.ablation_results())
        failures = []
        saved = figures.FIGURES["ablation"]

        def broken(_results):
            raise ValueError("boom")

        figures.FIGURES["ablation"] = broken
        try:
            with tempfile.TemporaryDirectory() as out:
                paths = figures.draw_all(results, out, only=["ablation", "time"],
                                         on_error=lambda family, e: failures.append(family))
        finally:
            figures.FIGURES["ablation"] = saved
        self.assertEqual(failures, ["ablation"])
        self.assertEqual(sorted(os.path.basename(p) for p in paths), ["time.pdf", "time.png"])


if __name__ == "__main__":
    unittest.main()
