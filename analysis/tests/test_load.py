"""The loaders against results directories written by the real binary."""

import json
import math
import os
import tempfile
import unittest

import numpy as np

from analysis import load
from analysis.tests import fixtures


class LoadAblation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = fixtures.ablation_results()
        cls.results = load.load_results(cls.dir)

    def test_runs_and_labels_in_experiment_order(self):
        self.assertEqual(len(self.results.runs), 4)
        self.assertEqual(self.results.labels, ["rtn", "rot"])
        self.assertEqual(self.results.name, "fixture_ablation")
        self.assertEqual(sorted({r.seed for r in self.results.runs}), [0, 1])
        for run in self.results.runs:
            self.assertEqual(run.status, "complete")
            self.assertEqual(os.path.basename(run.path), run.run_id + ".h5")
            self.assertEqual(run.config["method"]["label"], run.label)

    def test_metrics_histograms_timing(self):
        run = self.results.runs_of("rot")[0]
        for name in ("rel_output_error", "sqnr_db", "act_absmax", "build_seconds"):
            self.assertTrue(math.isfinite(run.metrics[name]), name)
        hist = run.histograms["act_after"]
        self.assertEqual(len(hist.edges), len(hist.counts) + 1)
        self.assertEqual(len(hist.counts), 32)
        self.assertAlmostEqual(hist.absmax, run.metrics["act_absmax"], delta=1e-6 * hist.absmax)
        self.assertEqual(set(run.timing) >= {"build", "apply", "total"}, True)

    def test_traces_read_as_arrays(self):
        run = self.results.runs_of("rot")[0]
        self.assertEqual(self.results.trace_names, ["grad_norm", "loss", "lr"])
        self.assertEqual(len(run.traces["loss"].step), len(run.traces["loss"].value))
        self.assertEqual(self.results.runs_of("rtn")[0].traces, {})

    def test_groups_match_summary_json(self):
        with open(os.path.join(self.dir, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        self.assertEqual(len(self.results.groups), len(summary["groups"]))
        for mine, theirs in zip(self.results.groups, summary["groups"]):
            self.assertEqual(mine.label, theirs["label"])
            self.assertEqual(len(mine.runs), theirs["runs"])
            for name, stats in theirs["metrics"].items():
                self.assertAlmostEqual(mine.mean(name), stats["mean"], delta=1e-9 * max(1, abs(stats["mean"])))
                self.assertAlmostEqual(mine.stderr(name), stats["stderr"], delta=1e-9 * max(1, abs(stats["stderr"])))

    def test_rotation_is_orthogonal(self):
        run = self.results.runs_of("rot")[0]
        self.assertEqual(run.rotation_sites, ["layer0"])
        R = run.rotation("layer0")
        self.assertEqual(R.shape, (32, 32))
        np.testing.assert_allclose(R.T @ R, np.eye(32), atol=1e-5)


class LoadSweep(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.results = load.load_results(fixtures.sweep_results())

    def test_points_and_swept_values(self):
        r = self.results
        self.assertEqual(r.swept_keys, ["quant.a_bits", "data.massive.magnitude"])
        self.assertEqual(r.varied_keys(), r.swept_keys)
        self.assertEqual(r.point_values("quant.a_bits"), [4, 8])
        self.assertEqual(r.point_values("data.massive.magnitude"), [100, 1000])
        self.assertEqual(len(r.groups), 8)
        for group in r.groups:
            self.assertEqual(len(group.runs), 2)
            self.assertEqual(set(group.point), set(r.swept_keys))

    def test_run_config_carries_the_point(self):
        for run in self.results.runs:
            self.assertEqual(str(run.config["quant"]["a_bits"]), run.point["quant.a_bits"])


class LoadErrors(unittest.TestCase):
    def test_missing_directory(self):
        with self.assertRaises(load.ResultsError) as ctx:
            load.load_results("/nonexistent/results")
        self.assertIn("no such results directory", str(ctx.exception))

    def test_directory_without_runs(self):
        with tempfile.TemporaryDirectory() as empty:
            with self.assertRaises(load.ResultsError) as ctx:
                load.load_results(empty)
            self.assertIn("no run files", str(ctx.exception))

    def test_parse_value(self):
        self.assertEqual(load.parse_value("5"), 5)
        self.assertEqual(load.parse_value("0.5"), 0.5)
        self.assertEqual(load.parse_value("[32, 128]"), "[32, 128]")
        self.assertEqual(load.parse_value("true"), "true")
        self.assertEqual(load.parse_value("w4a4"), "w4a4")


if __name__ == "__main__":
    unittest.main()
