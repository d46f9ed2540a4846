#!/usr/bin/env bash
# Installs the Debian packages sqlab needs (only the missing ones) and selects the
# fast BLAS. Idempotent: a second call on a ready machine installs nothing.
set -euo pipefail

packages=(
  g++ cmake ninja-build ccache make git pkg-config
  libtorch-dev libyaml-cpp-dev libfmt-dev libhdf5-dev hdf5-tools
  libboost-program-options-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libspdlog-dev
  # Tokenizers: sentencepiece (wrapper library, model/sentencepiece_wrapper.cpp) and
  # spm_train/spm_encode for the tokenizer tests.
  libsentencepiece-dev sentencepiece
  # Byte-level BPE pre-tokenizers need Unicode letter/number classes (model/bpe_tokenizer.cpp).
  libpcre2-dev
  # Task spec hashes (tasks/task.cpp: SHA-256 of each spec file in every run file).
  libssl-dev
  # Speed (toolchain.md): OpenBLAS's OpenMP variant and tcmalloc.
  libopenblas0-openmp libtcmalloc-minimal4
  # Figures: called through /usr/bin/python3.
  python3 python3-matplotlib python3-h5py python3-numpy python3-yaml
  # Notebooks (executed headless by the tests): nbconvert and the kernel.
  python3-nbconvert python3-ipykernel
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo); else
    echo "setup: not root and no sudo; install these yourself: ${packages[*]}" >&2; exit 1; fi
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# LibTorch's matmul must run on OpenBLAS's OpenMP build: the reference BLAS is ~50x
# slower, and the pthread build fights LibTorch's OpenMP threads (toolchain.md).
arch_dir=/usr/lib/$(gcc -print-multiarch)
for lib in libblas.so.3 liblapack.so.3; do
  alt="$lib-$(gcc -print-multiarch)"
  target="$arch_dir/openblas-openmp/$lib"
  if [ -e "$target" ] && [ "$(readlink -f "$arch_dir/$lib")" != "$(readlink -f "$target")" ]; then
    "${sudo_cmd[@]}" update-alternatives --quiet --set "$alt" "$target"
  fi
done
