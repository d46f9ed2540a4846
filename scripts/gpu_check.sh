#!/usr/bin/env bash
# The one-call GPU check (issue #20; README "LibTorch 2.x and CUDA builds"). Run on a GPU
# machine that has nvcc, a PyTorch 2.x with CUDA (python3 -c 'import torch'), CMake, ninja
# and a C++ compiler, and no network, from the repository root, with gpu-bundle/ (made here
# by scripts/gpu_bundle.sh) carried along:
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-check-out)
#
# In one command of under 10 minutes on 16 cores it
#   1. unpacks the bundle's .deb files into a prefix of its own (/tmp/sqlab-prefix; never /)
#      and points their HDF5 wrappers and pkg-config files there;
#   2. configures against the machine's PyTorch with SQLAB_CUDA=ON and builds sqlab,
#      sqlab_tests and sqlab_bench on every core;
#   3. runs the GPU-labelled tests (ctest -L gpu: every device path against its CPU result)
#      and the device tests that need no GPU;
#   4. runs the device microbenchmarks (sqlab_bench device/...: the fast Walsh-Hadamard
#      transform and fake quantization against a device-to-device copy of the same block,
#      float32/float16/bfloat16, n = 4096, 11008, 14336, 28672, 8192 tokens);
#   5. runs the LLaMA-2-7B-shaped SingleQuant pass at site level
#      (experiments/bench_llama2_7b_shapes.yaml, 224 sites) and, while time is left, at
#      model level layer by layer (a random BF16 checkpoint generated in /tmp; random token
#      ids, since ../shared does not travel);
#   6. writes OUT/gpu_check.json: the device and versions, each step's status and seconds,
#      the copy bandwidth, x_copy per kernel, dtype and width, and the 7B pass seconds.
# Each step's output is in OUT/STEP.log. Exit status 0 when every step passed.
# SQLAB_GPU_CHECK_STEPS="unpack configure" runs only the steps named (a dry run of the set-up
# on any machine with a PyTorch: the CMake cache then shows what was found where).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
prefix=/tmp/sqlab-prefix
build=${SQLAB_GPU_BUILD:-$root/build-gpu}
budget=${SQLAB_GPU_CHECK_SECONDS:-560}  # the device tool's command limit is 600 s
start=$(date +%s)
jobs=$(nproc)
arch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
steps_file="$out/steps.tsv"
: > "$steps_file"

wanted=${SQLAB_GPU_CHECK_STEPS:-unpack configure build gpu_tests bench site_7b model_7b}

# step NAME COMMAND...: runs it with its output in OUT/NAME.log; records status and seconds.
step() {
  local name=$1
  shift
  [[ " $wanted " == *" $name "* ]] || return 0
  local t0 status
  t0=$(date +%s%N)
  echo "== $name ($(( $(date +%s) - start )) s so far)"
  "$@" > "$out/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$steps_file"
  tail -5 "$out/$name.log"
  return $status
}
left() { echo $(( budget - ($(date +%s) - start) )); }

unpack() {
  [ -d gpu-bundle/debs ] || { echo "no gpu-bundle/debs: run scripts/gpu_bundle.sh where apt works, and carry gpu-bundle"; return 1; }
  rm -rf "$prefix" && mkdir -p "$prefix"
  for deb in gpu-bundle/debs/*.deb; do dpkg-deb -x "$deb" "$prefix" || return 1; done
  # Debian's HDF5 wrappers and pkg-config files name /usr: point them at the prefix.
  sed -i "s|^prefix=\"/usr\"|prefix=\"$prefix/usr\"|" "$prefix/usr/bin/h5cc" "$prefix/usr/bin/h5c++"
  sed -i "s|^prefix=/usr\$|prefix=$prefix/usr|" "$prefix"/usr/lib/"$arch"/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc 2>/dev/null
  du -sh "$prefix"
}

configure() {
  local torch_cmake
  torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || return 1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  local pkg_config=pkg-config
  command -v pkg-config > /dev/null || pkg_config=$prefix/usr/bin/pkgconf
  PKG_CONFIG_PATH="$prefix/usr/lib/$arch/pkgconfig:$prefix/usr/share/pkgconfig" \
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQLAB_CUDA=ON \
    -DCMAKE_PREFIX_PATH="$torch_cmake;$prefix/usr" \
    -DPKG_CONFIG_EXECUTABLE="$(command -v "$pkg_config")" \
    -DHDF5_C_COMPILER_EXECUTABLE="$prefix/usr/bin/h5cc" -DHDF5_CXX_COMPILER_EXECUTABLE="$prefix/usr/bin/h5c++" \
    -DOPENSSL_ROOT_DIR="$prefix/usr" -DBoost_NO_SYSTEM_PATHS=ON -DBOOST_ROOT="$prefix/usr"
}

build() { cmake --build "$build" -j "$jobs" --target sqlab sqlab_tests sqlab_bench; }

export LD_LIBRARY_PATH="$prefix/usr/lib/$arch:$prefix/usr/lib/$arch/hdf5/serial${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

gpu_tests() {
  (cd "$build" && ctest --output-on-failure -L gpu) || return 1
  (cd "$build" && ctest --output-on-failure -R '^(PortableHadamard|DeviceKeys)$')
}

bench() {
  "$build/sqlab_bench" --benchmark_filter='^device/' --benchmark_min_time=0.2 \
    --benchmark_out="$out/bench.json" --benchmark_out_format=json
}

site_7b() {
  "$build/sqlab" run experiments/bench_llama2_7b_shapes.yaml --out /tmp/sqlab-site-7b --json \
    --set data.device=cuda > "$out/site_7b.json"
}

prepare_model_7b() {
  python3 -c 'import random; random.seed(0); print(" ".join(str(random.randrange(32000)) for _ in range(16384)))' > /tmp/sqlab-ids.ids
  cat > /tmp/sqlab-7b.yaml <<EOF
name: gpu_7b_model
description: LLaMA-2-7B-shaped BF16 checkpoint on the GPU, layer by layer (random token ids)
seeds: [0]
model:
  path: /tmp/sqlab-models/llama-2-7b-bf16-seed0
  generate: {shape: llama-2-7b, dtype: BF16, seed: 0, shard_gb: 2}
  device: cuda
eval: {text: /tmp/sqlab-ids.ids, seq_len: 2048, max_tokens: 8192, batch: 1}
calib: {text: /tmp/sqlab-ids.ids, tokens: 2048, seq_len: 2048}
quant: {w_bits: 4, a_bits: 4, head_bits: 16}
methods:
  - {label: singlequant, method: singlequant, quant: {placement: online}}
record: {histograms: false, traces: false, rotations: false}
EOF
}

failed=0
step unpack unpack || failed=1
[ $failed = 0 ] && { step configure configure || failed=1; }
[ $failed = 0 ] && { step build build || failed=1; }
if [ $failed = 0 ]; then
  step gpu_tests gpu_tests || failed=1
  step bench bench || failed=1
  step site_7b site_7b || failed=1
  if [ "$(left)" -gt 180 ] && prepare_model_7b; then
    step model_7b timeout "$(( $(left) - 30 ))" bash -c '"$0" run /tmp/sqlab-7b.yaml --out /tmp/sqlab-model-7b --json > "$1"' \
      "$build/sqlab" "$out/model_7b.json" || failed=1
  else
    printf 'model_7b\tskipped (%s s left)\t0\n' "$(left)" >> "$steps_file"
  fi
fi

# The summary: OUT/gpu_check.json.
python3 - "$out" "$build" <<'EOF'
import json, os, subprocess, sys
out, build = sys.argv[1], sys.argv[2]
summary = {"steps": {}}
for line in open(os.path.join(out, "steps.tsv")):
    name, status, seconds = line.rstrip("\n").split("\t")
    summary["steps"][name] = {"status": status, "seconds": round(int(seconds) / 1000, 1)}
try:
    import torch
    p = torch.cuda.get_device_properties(0)
    summary["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                         "torch": torch.__version__, "cuda": torch.version.cuda}
    summary["device"]["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                 capture_output=True, text=True).stdout.strip()
except Exception as e:  # the summary is written whatever failed
    summary["device"] = {"error": str(e)}
bench = os.path.join(out, "bench.json")
if os.path.exists(bench):
    rows = {}
    for b in json.load(open(bench)).get("benchmarks", []):
        parts = b["name"].split("/")  # device/KERNEL/DTYPE/n/manual_time
        kernel, dtype, n = parts[1], parts[2], parts[3]
        rows.setdefault(kernel, {}).setdefault(dtype, {})[n] = {
            "us": round(b["real_time"] * {"ns": 1e-3, "us": 1, "ms": 1e3}.get(b.get("time_unit", "ns"), 1e-3), 2),
            "GB_per_s": round(b.get("bytes_per_second", 0) / 1e9, 1),
            "x_copy": round(b["x_copy"], 3) if "x_copy" in b else None}
    summary["bench"] = rows
for name in ("site_7b", "model_7b"):
    path = os.path.join(out, name + ".json")
    try:
        runs = json.load(open(path))
        group = runs["groups"][0]
        summary[name] = {k: v.get("mean") for k, v in group.get("metrics", {}).items()
                         if k.endswith("seconds") or k in ("ppl", "peak_rss_mib", "fused_logit_error", "rel_output_error")}
    except Exception as e:
        summary[name] = {"error": f"{path}: {e}"}
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(json.dumps(summary, indent=1)[:6000])
EOF
echo "gpu_check: $(( $(date +%s) - start )) s, $( [ $failed = 0 ] && echo passed || echo FAILED ); $out/gpu_check.json"
exit $failed
