"""Small results directories for the analysis tests, made by the real sqlab binary.

The binary comes from SQLAB_BINARY (ctest sets it to the built target); by hand,
the first build*/sqlab under the source tree is used. Each directory is made once per
test process and removed at exit. Traces are added to one label's run files with
h5py, in the documented layout (contract.md "Run file"), so the convergence figure is
tested without depending on which optimising methods the build has.
"""

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import unittest

import h5py
import numpy as np

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3"

ABLATION = """name: fixture_ablation
description: two methods, two seeds, histograms and rotations
seeds: [0, 1]
data: {source: synthetic, tokens: 64, channels: 32, out_features: 32, massive: {count: 1, magnitude: 300}}
methods:
  - {label: rtn, method: identity}
  - {label: rot, method: random_orthogonal}
record: {histograms: true, traces: true, rotations: true, histogram_bins: 32}
"""

SWEEP = """name: fixture_sweep
description: a 2 x 2 grid over two keys
seeds: [0, 1]
data: {source: synthetic, tokens: 64, channels: 32, out_features: 32, massive: {count: 1, magnitude: 300}}
methods:
  - {label: rtn, method: identity}
  - {label: rot, method: random_orthogonal}
sweep: {grid: {quant.a_bits: [4, 8], data.massive.magnitude: [100, 1000]}}
record: {histograms: true, histogram_bins: 16}
"""

_made = {}
_root = None


def sqlab_binary():
    """The sqlab executable to test, or None when there is no build."""
    binary = os.environ.get("SQLAB_BINARY")
    if binary and os.access(binary, os.X_OK):
        return binary
    found = sorted(glob.glob(os.path.join(SOURCE_DIR, "build*", "sqlab")))
    return found[0] if found else None


def require_binary(test):
    binary = sqlab_binary()
    if binary is None:
        raise unittest.SkipTest("no sqlab binary: build first or set SQLAB_BINARY")
    return binary


def temp_root():
    global _root
    if _root is None:
        _root = tempfile.mkdtemp(prefix="sqlab_analysis_test_")
        atexit.register(shutil.rmtree, _root, True)
    return _root


def _run_experiment(name, text):
    binary = require_binary(None)
    root = temp_root()
    yaml_path = os.path.join(root, name + ".yaml")
    with open(yaml_path, "w", encoding="utf-8") as f:
        f.write(text)
    out = os.path.join(root, name)
    env = dict(os.environ, OMP_NUM_THREADS="1", SQLAB_THREADS="1")
    proc = subprocess.run([binary, "run", yaml_path, "--out", out], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError("sqlab run {} failed ({}): {}".format(name, proc.returncode, proc.stderr))
    return out


def _add_traces(results_dir, label):
    """Give `label`'s runs an oscillating, decaying loss that ends at their squared
    rel_output_error, as cayley_sgd's does (so the single-pass lines can be matched)."""
    for path in glob.glob(os.path.join(results_dir, "runs", label + "-*.h5")):
        with h5py.File(path, "r+") as f:
            final = float(f["metrics/rel_output_error"][()]) ** 2
            steps = np.arange(0, 200, 2, dtype=np.int64)
            decay = np.exp(-steps / 40.0)
            loss = final * (1 + 2 * decay + 0.05 * np.sin(steps / 3.0) * decay)
            loss[-1] = final
            traces = f.require_group("traces")
            for name, values in (("loss", loss), ("grad_norm", 3 * decay + 1e-3), ("lr", 0.1 * decay + 0.01)):
                group = traces.create_group(name)
                group.create_dataset("step", data=steps)
                group.create_dataset("value", data=values.astype(np.float64))


def ablation_results():
    """Two labels x two seeds, one site, with histograms, rotations and (added) traces."""
    if "ablation" not in _made:
        out = _run_experiment("fixture_ablation", ABLATION)
        _add_traces(out, "rot")
        _made["ablation"] = out
    return _made["ablation"]


def sweep_results():
    """Two labels x a 2 x 2 grid (quant.a_bits x data.massive.magnitude) x two seeds."""
    if "sweep" not in _made:
        _made["sweep"] = _run_experiment("fixture_sweep", SWEEP)
    return _made["sweep"]


def python_env(**extra):
    """The environment for a child /usr/bin/python3 that imports `analysis`."""
    env = dict(os.environ, PYTHONPATH=SOURCE_DIR, MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.update(extra)
    return env
