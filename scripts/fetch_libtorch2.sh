#!/usr/bin/env bash
# Fetches a pip PyTorch 2.x's LibTorch (README "LibTorch 2.x and CUDA builds") into a cache
# outside the repository, once, and prints the folder CMAKE_PREFIX_PATH wants.
#
# The Linux x86_64 `torch` wheel on PyPI is the CUDA build; it is downloaded alone (no
# `nvidia-*` runtime wheels, several GB) and only what a C++ build needs is unpacked from it
# (torch/include, torch/lib, torch/share: about 1 GB). The same wheel serves both extra
# configurations: the CPU one links libtorch_cpu only (at run time it still needs
# libcudart.so.13 and libcupti.so.13, which the CUDA toolkit on these machines has), the
# CUDA one links libtorch_cuda and compiles sqlab's kernels with nvcc.
#
# Cache: $SQLAB_LIBTORCH_CACHE, default ~/.cache/sqlab/libtorch. Idempotent: a complete
# unpacked copy (marked by its .complete file) is reused. Exit 1 with a message when the
# wheel cannot be had or its sha256 differs.
set -euo pipefail

version=${SQLAB_TORCH2_VERSION:-2.15.0}
# The wheel is pinned to one file (CPython 3.11 tag, manylinux_2_28) whatever Python runs
# pip, so its checksum is stable. The C++ libraries inside do not depend on the tag.
python_tag=3.11
platform=manylinux_2_28_x86_64
declare -A sha256=(
  [2.15.0]=48c2d861134c0b5697c7602cb5ffa68f62a2989fdcd1717e593356f67996ca1e
)

cache=${SQLAB_LIBTORCH_CACHE:-$HOME/.cache/sqlab/libtorch}
target="$cache/torch-$version"
if [ -f "$target/.complete" ]; then
  echo "$target/share/cmake"
  exit 0
fi

expected=${sha256[$version]:-}
if [ -z "$expected" ]; then
  echo "fetch_libtorch2: no checksum recorded for torch $version (add it to $0)" >&2
  exit 1
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch_libtorch2: torch==$version from PyPI into $target" >&2
start=$(date +%s)
downloaded=0
for py in python3 /usr/bin/python3; do
  if command -v "$py" >/dev/null && "$py" -m pip --version >/dev/null 2>&1; then
    if "$py" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
         --python-version "$python_tag" --platform "$platform" --dest "$tmp" "torch==$version" >&2; then
      downloaded=1
      break
    fi
  fi
done
if [ "$downloaded" != 1 ]; then
  echo "fetch_libtorch2: could not download torch==$version from PyPI (python3 -m pip)" >&2
  exit 1
fi
wheel=$(ls "$tmp"/torch-*.whl)
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$expected" ]; then
  echo "fetch_libtorch2: $(basename "$wheel") has sha256 $got, expected $expected" >&2
  exit 1
fi
python3 - "$wheel" "$tmp/unpacked" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    members = [m for m in wheel.namelist()
               if m.startswith(("torch/include/", "torch/lib/", "torch/share/"))
               and not m.startswith("torch/lib/libtorch_python")]
    wheel.extractall(sys.argv[2], members)
EOF
rm -f "$wheel"
rm -rf "$target"
mv "$tmp/unpacked/torch" "$target"  # whole or not at all
touch "$target/.complete"
echo "fetch_libtorch2: $target ($(du -sh "$target" | cut -f1), $(( $(date +%s) - start )) s)" >&2
echo "$target/share/cmake"
