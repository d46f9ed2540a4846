"""Rebuilds every rotation of a file written by `sqlab export` with numpy alone
(analysis.rotations) and compares it with rows of Rotation::dense() that the C++ test
wrote (tests/test_stored_forms.cpp).

usage: check_exported_rotations.py EXPORTED.safetensors REFERENCE.safetensors [DENSE.safetensors]

REFERENCE holds, per site, SITE.rows (the row indices) and SITE.values (those rows of the
dense matrix, from Rotation::apply on unit rows).  DENSE is the same run exported with
--dense: every orthogonal rotation there must be a plain SITE.R equal to the rebuilt one.
Prints one line per site; exit 1 when a site differs by more than 1e-10 or the file's
metadata (forms, layout) does not describe what it holds.
"""

import json
import sys

import numpy as np

from analysis import rotations


def check(exported_path, reference_path, dense_path=None):
    sites, meta = rotations.exported_rotations(exported_path)
    reference, _ = rotations.read_safetensors(reference_path)
    forms = json.loads(meta["forms"])
    layout_lines = meta["layout"].split("\n")
    dense_sites = rotations.exported_rotations(dense_path)[0] if dense_path else {}
    failures = 0
    for site, factors in sorted(sites.items()):
        form = rotations.form_of(factors)
        rows = reference[site + ".rows"].astype(np.int64).reshape(-1)
        expected = reference[site + ".values"]
        n = rotations.size(factors)
        unit = np.zeros((rows.size, n))
        unit[np.arange(rows.size), rows] = 1.0
        by_apply = np.abs(rotations.apply(factors, unit) - expected).max()
        by_dense = np.abs(rotations.dense(factors)[rows] - expected).max() if n <= 12288 else 0.0
        problems = []
        if forms.get(site) != form:
            problems.append("metadata says form {!r}".format(forms.get(site)))
        if not any(line.startswith(form + ": ") for line in layout_lines):
            problems.append("no layout line for {}".format(form))
        if max(by_apply, by_dense) > 1e-10:
            problems.append("differs from Rotation::dense()")
        if dense_path:
            d = dense_sites[site]
            if form == "transform":
                by_export = np.abs(d["T"][rows] - expected).max()
            else:
                by_export = np.abs(d["R"][rows] - expected).max() if set(d) == {"R"} else np.inf
            if by_export > 1e-10:
                problems.append("--dense export differs ({})".format(by_export))
        print("{} {} n={} apply_err={:.3g} dense_err={:.3g} {}".format(
            site, form, n, by_apply, by_dense, "; ".join(problems) or "ok"))
        failures += bool(problems)
    return failures


if __name__ == "__main__":
    sys.exit(1 if check(*sys.argv[1:]) else 0)
