#!/usr/bin/env python3
"""Writes the GGUF fixtures of tests/test_gguf.cpp with another tool: gguf-py (the
`gguf` package of llama.cpp), so that sqlab's reader is checked against files it did
not write. For each fixture NAME.gguf it writes NAME.json with what a reader must find:
the metadata (type and value) and every tensor's dequantized float32 values, computed
by gguf-py's own dequantizer, with its PyTorch shape (numpy order = GGUF dims reversed).

Run with a Python that has `gguf` and numpy, from the repository root:
  /root/.cache/sqlab/venv/bin/python tools/make_gguf_fixtures.py
The output is deterministic (fixed seed); the files are committed, each under 20 KB.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "gguf")


def metadata(writer):
    """One key of every value type, with the type each is written as."""
    items = [
        ("test.u8", 200, V.UINT8), ("test.i8", -100, V.INT8), ("test.u16", 60000, V.UINT16),
        ("test.i16", -30000, V.INT16), ("test.u32", 4000000000, V.UINT32), ("test.i32", -2000000000, V.INT32),
        ("test.f32", 0.1, V.FLOAT32), ("test.bool", True, V.BOOL), ("test.string", "héllo ☃", V.STRING),
        ("test.u64", 2**63 + 5, V.UINT64), ("test.i64", -(2**62), V.INT64), ("test.f64", 2.0 / 3.0, V.FLOAT64),
    ]
    for key, value, vtype in items:
        writer.add_key_value(key, value, vtype)
    writer.add_key_value("test.strings", ["a", "", "ü", "tokens with spaces"], V.ARRAY, sub_type=V.STRING)
    writer.add_key_value("test.i32s", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    writer.add_key_value("test.f32s", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
    writer.add_key_value("test.nested", [[1, 2], [3, 4, 5]], V.ARRAY, sub_type=V.ARRAY)


def quantized(values, qtype):
    """gguf-py's quantizer, then its dequantizer: what the file holds and what it means."""
    with np.errstate(over="ignore"):  # -70000 to fp16 is meant to overflow to -inf
        raw = gguf.quants.quantize(values, qtype) if qtype not in (Q.F32, Q.F16) else values.astype(
            np.float32 if qtype == Q.F32 else np.float16)
    return raw, gguf.quants.dequantize(raw, qtype).reshape(values.shape).astype(np.float32)


def number(v):
    """JSON has no Infinity or NaN: those are written as the strings "inf", "-inf", "nan"."""
    v = float(v)
    return v if np.isfinite(v) else ("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf"))


def tensor_json(name, qtype, values):
    return {"name": name, "type": qtype.name, "shape": list(values.shape),
            "values": [number(v) for v in values.astype(np.float32).reshape(-1)]}


def write(name, tensors, alignment=None, extra=None):
    path = os.path.join(OUT, name + ".gguf")
    writer = gguf.GGUFWriter(path, arch="sqlabtest")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    if extra:
        extra(writer)
    expected = {"file": name + ".gguf", "alignment": alignment or 32, "tensors": []}
    for tname, qtype, values in tensors:
        if qtype == Q.Q5_K:  # raw bytes of a type sqlab refuses to dequantize
            writer.add_tensor(tname, values, raw_dtype=qtype)
            expected["tensors"].append({"name": tname, "type": qtype.name, "shape": [1, 256], "values": None})
            continue
        raw, deq = quantized(values, qtype)
        writer.add_tensor(tname, raw, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
        expected["tensors"].append(tensor_json(tname, qtype, deq))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)
    f16_values = rng.standard_normal((2, 24)).astype(np.float32)
    f16_values[1, :8] *= 1e-6      # fp16 subnormals
    f16_values[1, 8:12] = [65504.0, 65519.0, -70000.0, 1e-9]  # max, rounds to max, inf, zero
    q4_0_values = rng.standard_normal((3, 64)).astype(np.float32)
    q4_0_values[2, :32] = 0.0      # an all-zero block (d = 0)
    types = [
        ("f32.weight", Q.F32, rng.standard_normal((3, 20)).astype(np.float32)),
        ("f16.weight", Q.F16, f16_values),
        ("bf16.weight", Q.BF16, (rng.standard_normal((2, 16)) * 100).astype(np.float32)),
        ("q8_0.weight", Q.Q8_0, rng.standard_normal((4, 64)).astype(np.float32)),
        ("q4_0.weight", Q.Q4_0, q4_0_values),
        ("q4_1.weight", Q.Q4_1, (rng.standard_normal((2, 3, 32)) * 0.1 + 0.05).astype(np.float32)),
        ("q5_k.weight", Q.Q5_K, np.zeros((1, 176), dtype=np.uint8)),
    ]
    write("types", types, extra=metadata)
    aligned = [
        ("a", Q.F32, rng.standard_normal((5,)).astype(np.float32)),
        ("b", Q.F16, rng.standard_normal((7,)).astype(np.float32)),
        ("c", Q.Q8_0, rng.standard_normal((2, 32)).astype(np.float32)),
    ]
    write("aligned64", aligned, alignment=64)
    return 0


if __name__ == "__main__":
    sys.exit(main())
