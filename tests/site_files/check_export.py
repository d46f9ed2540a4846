#!/usr/bin/python3
"""Checks `sqlab export` output against the run file, with numpy and h5py only.

usage: check_export.py RUN.h5 EXPORTED.safetensors [--npy DIR]

For every /rotations/SITE/FACTOR of the run file: the exported SITE.FACTOR is equal
(bit for bit, float64), R = R1 (x) R2 (or R) is orthogonal, and the metadata names the
run, the method and its options. Prints each tensor's name and shape.
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    kinds = {"F64": "<f8", "F32": "<f4"}
    tensors = {name: np.frombuffer(raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]],
                                   kinds[e["dtype"]]).reshape(e["shape"]) for name, e in header.items()}
    return tensors, meta


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_file")
    parser.add_argument("exported")
    parser.add_argument("--npy", help="directory of the --format npy export of the same run")
    args = parser.parse_args()
    tensors, meta = load_safetensors(args.exported)
    failures = []
    with h5py.File(args.run_file, "r") as f:
        run_id = f.attrs["run_id"]
        run_id = run_id.decode() if isinstance(run_id, bytes) else run_id
        method = f.attrs["method"]
        method = method.decode() if isinstance(method, bytes) else method
        if meta.get("run_id") != run_id:
            failures.append(f"metadata run_id {meta.get('run_id')!r} != {run_id!r}")
        if meta.get("method") != method:
            failures.append(f"metadata method {meta.get('method')!r} != {method!r}")
        options = json.loads(meta.get("options", "null"))
        if not isinstance(options, dict) or options.get("method") != method:
            failures.append(f"metadata options {meta.get('options')!r} do not name the method")
        expected = set()
        for site, group in f["rotations"].items():
            factors = {name: group[name][()] for name in group}
            for name, value in factors.items():
                key = f"{site}.{name}"
                expected.add(key)
                got = tensors.get(key)
                if got is None or got.shape != value.shape or not np.array_equal(got, value):
                    failures.append(f"{key}: differs from /rotations/{site}/{name}")
                if args.npy:
                    npy = np.load(os.path.join(args.npy, f"{run_id}.{key}.npy"))
                    if not np.array_equal(npy, value):
                        failures.append(f"{key}: the .npy copy differs")
            r = np.kron(factors["R1"], factors["R2"]) if "R1" in factors else factors["R"]
            error = np.abs(r.T @ r - np.eye(r.shape[0])).max()
            if error > 1e-10:
                failures.append(f"{site}: R^T R - I = {error:.3g}")
        if set(tensors) != expected:
            failures.append(f"exported tensors {sorted(tensors)} != run file {sorted(expected)}")
    for name, t in sorted(tensors.items()):
        print(f"{name} {list(t.shape)} {t.dtype}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
