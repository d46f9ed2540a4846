#!/usr/bin/env bash
# Prints the OpenBLAS core type to force on this machine, or nothing when OpenBLAS's own
# detection is fine. OpenBLAS 0.3.21 (Debian bookworm) does not know recent Xeons (e.g.
# family 6 model 207) and falls back to its generic Prescott kernels: f32 GEMM at 28
# GFLOPS on one core instead of 110 with the AVX-512 (SkylakeX) ones, measured on the
# development machine. Forcing Haswell on an AVX-512 CPU halves the speed instead
# (toolchain.md), so the choice follows the CPU's flags: SkylakeX with AVX-512 F/BW/DQ/VL,
# Haswell with AVX2 and FMA. The build uses it for the tests (CMakeLists.txt); the sqlab
# binary makes the same choice itself at start-up (app/main.cpp).
set -euo pipefail

detected=$(env -u OPENBLAS_CORETYPE OPENBLAS_VERBOSE=2 /usr/bin/python3 -c 'import numpy' 2>&1 |
           sed -n 's/^Core: //p' | head -n 1) || true
case "$detected" in
  Prescott|Core2|Penryn|Dunnington|Nehalem|Atom|Katmai|Coppermine|Northwood|Banias|"") ;;
  *) exit 0 ;;  # a real core: keep OpenBLAS's choice
esac
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then
  echo SkylakeX
elif has avx2 && has fma; then
  echo Haswell
fi
