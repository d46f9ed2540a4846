"""The notebooks execute headless (nbconvert) on a small results directory.

Set SQLAB_SKIP_NOTEBOOKS=1 to leave them out (ctest runs them as their own entry,
analysis_notebooks, so they run in parallel with the other Python tests).
"""

import importlib.util
import json
import os
import subprocess
import tempfile
import unittest

from analysis.tests import fixtures

NOTEBOOKS = os.path.join(fixtures.SOURCE_DIR, "notebooks")


def start(name, results, out_dir, **env):
    """Starts executing one notebook with nbconvert; returns the process."""
    return subprocess.Popen(
        [fixtures.PYTHON, "-m", "nbconvert", "--to", "notebook", "--execute", "--output-dir", out_dir,
         "--ExecutePreprocessor.timeout=300", os.path.join(NOTEBOOKS, name)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=fixtures.python_env(SQLAB_RESULTS=results, **env))


def finish(proc, name, out_dir):
    """Waits for a notebook; returns (exit code, stderr, executed notebook as JSON or None)."""
    _, stderr = proc.communicate()
    path = os.path.join(out_dir, name)
    notebook = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            notebook = json.load(f)
    return proc.returncode, stderr, notebook


def outputs(notebook):
    return [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]


@unittest.skipIf(os.environ.get("SQLAB_SKIP_NOTEBOOKS"), "notebooks run as their own ctest entry")
class Notebooks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not all(importlib.util.find_spec(m) for m in ("nbconvert", "ipykernel")):
            raise unittest.SkipTest("install python3-nbconvert python3-ipykernel (scripts/setup.sh does)")
        results = fixtures.ablation_results()
        cls.out = tempfile.mkdtemp(dir=fixtures.temp_root())
        cls.figures_dir = os.path.join(cls.out, "figures")
        # Both at once: most of each run is the kernel starting up.
        explore = start("explore_results.ipynb", results, cls.out)
        reproduce = start("reproduce_figures.ipynb", results, cls.out, SQLAB_FIGURES=cls.figures_dir)
        cls.explore = finish(explore, "explore_results.ipynb", cls.out)
        cls.reproduce = finish(reproduce, "reproduce_figures.ipynb", cls.out)

    def test_explore_results(self):
        code, stderr, notebook = self.explore
        self.assertEqual(code, 0, stderr[-3000:])
        kinds = [o["output_type"] for o in outputs(notebook)]
        self.assertNotIn("error", kinds)
        images = [o for o in outputs(notebook) if "image/png" in o.get("data", {})]
        self.assertGreaterEqual(len(images), 3)  # convergence, traces, histograms
        text = "".join("".join(o.get("text", "")) for o in outputs(notebook))
        self.assertIn("fixture_ablation: 4 runs", text)
        self.assertIn("n = 32 stored as dense", text)
        self.assertRegex(text, r"max \|RᵀR - I\| = [0-9.e-]+  apply vs dense: 0\.0")

    def test_reproduce_figures(self):
        code, stderr, notebook = self.reproduce
        self.assertEqual(code, 0, stderr[-3000:])
        self.assertNotIn("error", [o["output_type"] for o in outputs(notebook)])
        images = [o for o in outputs(notebook) if "image/png" in o.get("data", {})]
        written = sorted(os.listdir(self.figures_dir))
        self.assertEqual(len(images), len([w for w in written if w.endswith(".png")]))
        for stem in ("convergence", "ablation_rel_output_error", "histograms", "time"):
            self.assertIn(stem + ".png", written)
            self.assertIn(stem + ".pdf", written)


if __name__ == "__main__":
    unittest.main()
