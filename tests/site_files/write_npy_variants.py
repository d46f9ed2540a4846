#!/usr/bin/python3
"""Writes one site as NumPy itself writes .npy files (Fortran order, float16, a version
2.0 header) next to an h5py copy of the same values, for the npy reader's test.

usage: write_npy_variants.py DIR
"""
import sys

import h5py
import numpy as np

out = sys.argv[1]
rng = np.random.default_rng(7)
x = rng.standard_normal((40, 24)).astype(np.float16)
w = rng.standard_normal((12, 24)).astype(np.float32)
np.save(f"{out}/x_fortran_f16.npy", np.asfortranarray(x))
with open(f"{out}/w_v2.npy", "wb") as f:
    np.lib.format.write_array(f, w, version=(2, 0))
np.save(f"{out}/w_f64.npy", w.astype(np.float64))
with h5py.File(f"{out}/same.h5", "w") as f:
    f["X"] = x
    f["W"] = w
