"""`python3 -m analysis` (what `sqlab plot` runs): outputs, exit codes, the install hint."""

import os
import re
import subprocess
import tempfile
import unittest

from analysis import figures
from analysis.tests import fixtures


def run_entry(*args, **env):
    return subprocess.run([fixtures.PYTHON, "-m", "analysis", *args], capture_output=True, text=True,
                          env=fixtures.python_env(**env), cwd=tempfile.gettempdir())


class EntryPoint(unittest.TestCase):
    def test_draws_and_prints_the_paths(self):
        with tempfile.TemporaryDirectory() as out:
            proc = run_entry(fixtures.ablation_results(), "--out", out, "--only", "histograms,time")
            self.assertEqual(proc.returncode, 0, proc.stderr)
            paths = proc.stdout.split()
            self.assertEqual(sorted(os.path.basename(p) for p in paths),
                             ["histograms.pdf", "histograms.png", "time.pdf", "time.png"])
            for path in paths:
                self.assertTrue(os.path.isfile(path), path)

    def test_missing_results_directory_is_a_usage_error(self):
        proc = run_entry("/nonexistent/results")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("no such results directory", proc.stderr)

    def test_unknown_figure_is_a_usage_error(self):
        proc = run_entry(fixtures.ablation_results(), "--only", "bogus")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("unknown figure bogus", proc.stderr)

    def test_missing_h5py_gives_the_debian_install_hint(self):
        with tempfile.TemporaryDirectory() as fake:
            with open(os.path.join(fake, "h5py.py"), "w", encoding="utf-8") as f:
                f.write('raise ImportError("No module named h5py (test)")\n')
            proc = run_entry(fixtures.ablation_results(), PYTHONPATH=fake + os.pathsep + fixtures.SOURCE_DIR)
        self.assertEqual(proc.returncode, 3)
        self.assertIn("python3-h5py", proc.stderr)
        self.assertIn("apt-get install", proc.stderr)
        self.assertNotIn("python3-numpy", proc.stderr)  # only the missing one
        self.assertNotIn("Traceback", proc.stderr)

    def test_list_matches_the_binary(self):
        proc = run_entry("--list")
        self.assertEqual(proc.stdout.split(), list(figures.FIGURES))
        binary = fixtures.require_binary(self)
        help_text = subprocess.run([binary, "plot", "--help"], capture_output=True, text=True).stdout
        listed = re.search(r"figures: (.*)", help_text).group(1).split(", ")
        self.assertEqual(listed, list(figures.FIGURES), "app/plot_command.cpp figure_families() is out of date")


class SqlabPlot(unittest.TestCase):
    """The binary's `plot` command on top of the entry point."""

    def test_plot_writes_into_results_figures(self):
        binary = fixtures.require_binary(self)
        results = fixtures.sweep_results()
        proc = subprocess.run([binary, "plot", results], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        names = sorted(os.path.basename(p) for p in proc.stdout.split())
        for stem in ("sweep_a_bits", "sweep_magnitude", "sweep_map_a_bits_x_magnitude", "ablation_rel_output_error"):
            self.assertIn(stem + ".png", names)
            self.assertIn(stem + ".pdf", names)
            self.assertTrue(os.path.isfile(os.path.join(results, "figures", stem + ".png")))


if __name__ == "__main__":
    unittest.main()
