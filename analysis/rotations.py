"""A fitted rotation from what sqlab stored: the run file's /rotations/SITE/ group or an
exported file (`sqlab export`).

Each rotation type is stored in one form (rotations/stored_form.h holds the same table):

  dense             R                      R itself (n x n)
  kronecker         R1, R2                 R = kron(R1, R2)
  hadamard_compact  H_base, signs          R = diag(signs) kron(S_p, H_base) / sqrt(n),
                                           p = n / m, S_p[i, j] = (-1)^popcount(i & j)
  block_diagonal    blocks                 R = block_diag(blocks[0:b], blocks[b:2b], ...)
  permutation       source                 R[source[j], j] = 1: x @ R = x[:, source]
  transform         T, T_w                 not orthogonal: x -> x @ T, W -> W @ T_w

A row x maps to x @ R, a weight W (out x n) to W @ R.  `dense(factors)` builds R (n^2 * 8
bytes: 6.6 GB at n = 28672); `apply(factors, x)` computes x @ R without it, in
O(n log n) per row for the Hadamard form.  Only numpy is needed.
"""

import json
import struct

import numpy as np

FORMS = {
    "dense": ("R",),
    "kronecker": ("R1", "R2"),
    "hadamard_compact": ("H_base", "signs"),
    "block_diagonal": ("blocks",),
    "permutation": ("source",),
    "transform": ("T", "T_w"),
}


def form_of(factors):
    """The name of the stored form whose tensors are exactly `factors`' keys."""
    names = sorted(factors)
    for form, tensors in FORMS.items():
        if sorted(tensors) == names:
            return form
    raise ValueError("tensors {} are in no known stored form ({})".format(
        names, ", ".join("+".join(t) for t in FORMS.values())))


def size(factors):
    """n, the width the rotation acts on."""
    form = form_of(factors)
    f = {name: np.asarray(value) for name, value in factors.items()}
    if form == "kronecker":
        return f["R1"].shape[0] * f["R2"].shape[0]
    if form in ("hadamard_compact", "permutation"):
        return f["signs" if form == "hadamard_compact" else "source"].size
    if form == "block_diagonal":
        return f["blocks"].shape[0]
    return f["R" if form == "dense" else "T"].shape[0]


def sylvester(p):
    """The Sylvester Hadamard matrix of order p = 2^k: entry (i, j) = (-1)^popcount(i & j)."""
    if p < 1 or p & (p - 1):
        raise ValueError("Sylvester order {} is not a power of 2".format(p))
    s = np.ones((1, 1))
    while s.shape[0] < p:
        s = np.block([[s, s], [s, -s]])
    return s


def _walsh_hadamard(y):
    """y @ S_p over the last axis (length p = 2^k), unnormalized, by butterflies."""
    p = y.shape[-1]
    y = np.array(y, dtype=np.float64, copy=True)
    h = 1
    while h < p:
        y = y.reshape(y.shape[:-1] + (p // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        y = np.stack([a + b, a - b], axis=-2).reshape(y.shape[:-3] + (p,))
        h *= 2
    return y


def _block_diagonal(blocks):
    b = blocks.shape[1]
    k = blocks.shape[0] // b
    r = np.zeros((k * b, k * b))
    for i in range(k):
        r[i * b:(i + 1) * b, i * b:(i + 1) * b] = blocks[i * b:(i + 1) * b]
    return r


def dense(factors):
    """The n x n matrix a row maps by: R (orthogonal forms) or T (a transform)."""
    form = form_of(factors)
    f = {name: np.asarray(value, dtype=np.float64) for name, value in factors.items()}
    if form == "dense":
        return f["R"]
    if form == "kronecker":
        return np.kron(f["R1"], f["R2"])
    if form == "hadamard_compact":
        signs = f["signs"].reshape(-1)
        n, m = signs.size, f["H_base"].shape[0]
        return signs[:, None] * np.kron(sylvester(n // m), f["H_base"]) / np.sqrt(n)
    if form == "block_diagonal":
        return _block_diagonal(f["blocks"])
    if form == "permutation":
        source = np.rint(f["source"].reshape(-1)).astype(np.int64)
        r = np.zeros((source.size, source.size))
        r[source, np.arange(source.size)] = 1.0
        return r
    return f["T"]


def apply(factors, x):
    """x @ R for rows x (... x n), without forming R where the form allows."""
    form = form_of(factors)
    x = np.asarray(x, dtype=np.float64)
    f = {name: np.asarray(value, dtype=np.float64) for name, value in factors.items()}
    if form == "kronecker":
        r1, r2 = f["R1"], f["R2"]
        y = x.reshape(x.shape[:-1] + (r1.shape[0], r2.shape[0]))
        return np.einsum("...ij,ia,jb->...ab", y, r1, r2).reshape(x.shape)
    if form == "hadamard_compact":
        signs, base = f["signs"].reshape(-1), f["H_base"]
        n, m = signs.size, base.shape[0]
        y = (x * signs).reshape(x.shape[:-1] + (n // m, m)) @ base  # H_base on the last index
        y = np.swapaxes(_walsh_hadamard(np.swapaxes(y, -1, -2)), -1, -2)  # S_p on the first
        return y.reshape(x.shape) / np.sqrt(n)
    if form == "block_diagonal":
        blocks = f["blocks"]
        b = blocks.shape[1]
        k = blocks.shape[0] // b
        y = x.reshape(x.shape[:-1] + (k, b))
        return np.einsum("...ki,kij->...kj", y, blocks.reshape(k, b, b)).reshape(x.shape)
    if form == "permutation":
        return x[..., np.rint(f["source"].reshape(-1)).astype(np.int64)]
    return x @ dense(factors)


def read_safetensors(path):
    """(tensors {name: float64 array}, metadata {key: str}) of a safetensors file."""
    with open(path, "rb") as fh:
        raw = fh.read()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    metadata = header.pop("__metadata__", {})
    dtypes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        data = np.frombuffer(raw[8 + size + begin:8 + size + end], dtype=dtypes[info["dtype"]])
        tensors[name] = data.reshape(info["shape"]).astype(np.float64)
    return tensors, metadata


def exported_rotations(path):
    """{site: {factor: array}} and the metadata of a file written by `sqlab export`."""
    tensors, metadata = read_safetensors(path)
    sites = {}
    for name, value in tensors.items():
        site, factor = name.rsplit(".", 1)
        sites.setdefault(site, {})[factor] = value
    return sites, metadata
