#!/usr/bin/env bash
# Prepares the bundle that scripts/gpu_check.sh needs on a GPU machine (README "LibTorch 2.x
# and CUDA builds"): such a machine has nvcc, a PyTorch 2.x with CUDA, CMake, ninja and a
# compiler, but none of sqlab's other libraries and no network. This downloads Debian's
# .deb files of those libraries (headers, CMake/pkg-config files and the shared libraries
# they point to) into gpu-bundle/debs/ (git-ignored), which the check unpacks into a prefix
# of its own there (never into /). The device tool carries the folder with the working tree
# (`carry: [gpu-bundle]`); its limit is 64 MiB, and this bundle is about 22 MB.
#
# Usage: scripts/gpu_bundle.sh            (needs apt-get and Debian's package lists)
set -euo pipefail
cd "$(dirname "$0")/.."

out=gpu-bundle/debs
packages=(
  # YAML, formatting, JSON
  libyaml-cpp-dev libyaml-cpp0.7 libfmt-dev libfmt9 nlohmann-json3-dev
  # HDF5 (serial) with its C++ API, and what its libraries and its CMake detection need
  libhdf5-dev libhdf5-103-1 libhdf5-cpp-103-1 libhdf5-hl-100 libhdf5-hl-cpp-100 hdf5-helpers
  libsz2 libaec0 libaec-dev zlib1g-dev libcurl4 libcurl4-openssl-dev libssl-dev libssl3
  # Boost.Program_options (its headers need Boost's)
  libboost-program-options-dev libboost-program-options1.74-dev libboost-program-options1.74.0
  libboost1.74-dev
  # tests, benchmarks, tcmalloc
  libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian
  libgoogle-perftools-dev libtcmalloc-minimal4 libgoogle-perftools4 libunwind8
  # PCRE2 (the BPE pre-tokenizers) and pkg-config to find it
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  pkgconf pkgconf-bin libpkgconf3
)

mkdir -p "$out"
rm -f "$out"/*.deb
(cd "$out" && apt-get download "${packages[@]}")
count=$(ls "$out"/*.deb | wc -l)
bytes=$(du -cb "$out"/*.deb | tail -1 | cut -f1)
echo "gpu_bundle: $count packages, $((bytes / 1024 / 1024)) MiB in $out"
if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu_bundle: over 60 MiB: the device tool carries 64 MiB with the working tree" >&2
  exit 1
fi
