#!/usr/bin/python3
"""Writes a site file the way the README's capture recipe does ("Studying a large
model's activations"), with h5py and numpy only: the recipe's forward hooks are replaced
by LLaMA-like synthetic activations, the h5py calls are the same.

usage: write_capture_site.py OUT.h5 [--tokens T] [--width N]
"""
import argparse

import h5py
import numpy as np


def llama_like(rng, tokens, width):
    x = rng.standard_t(df=5, size=(tokens, width)).astype(np.float32)
    x[0, [3, width // 2]] = [900.0, -450.0]          # massive outliers at the first token
    x[:, 7::max(width // 8, 1)] *= 8.0                # a few normal-outlier channels
    return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(1234)
    t, n = args.tokens, args.width
    attn_in = llama_like(rng, t, n)
    q, k, v = (rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n) for _ in range(3))
    down_in = llama_like(rng, t, 2 * n).astype(np.float16)  # a float16 capture (no .float())
    down_w = (rng.standard_normal((n, 2 * n)) / np.sqrt(2 * n)).astype(np.float16)

    sites = {
        "layer0.qkv": (attn_in, np.concatenate([q, k, v])),   # q, k, v read the same input
        "layer0.down": (down_in, down_w),
    }
    with h5py.File(args.out, "w") as f:
        for site, (x, w) in sites.items():
            f.create_dataset(f"sites/{site}/X", data=x)      # T x n
            f.create_dataset(f"sites/{site}/W", data=w)      # C_out x n
    print(f"wrote {args.out}: " + ", ".join(f"{s} X{list(x.shape)} W{list(w.shape)}" for s, (x, w) in sites.items()))


if __name__ == "__main__":
    main()
