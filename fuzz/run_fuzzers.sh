#!/usr/bin/env bash
# Runs every libFuzzer target of a SQLAB_FUZZ build for SECONDS each, FUZZ_JOBS at once (make fuzz,
# make stress), seeded from the bad-input corpus, the shipped experiments and presets,
# fuzz/seeds/ and fuzz/regressions/ (inputs that once crashed a target: keep them).
# New interesting inputs accumulate in BUILD/fuzz-corpus/TARGET across runs; a crash
# is written to BUILD/fuzz-artifacts/TARGET/ and makes this script exit 1.
#   fuzz/run_fuzzers.sh BUILD_DIR SECONDS [TARGET...]
set -u
build=${1:?usage: fuzz/run_fuzzers.sh BUILD_DIR SECONDS [TARGET...]}
seconds=${2:-60}
shift 2 || true
root=$(cd "$(dirname "$0")/.." && pwd)
# Absolute: the experiment target works in its own temporary directory (relative `data:`
# paths stay there), so corpus and artifact paths must not depend on the cwd.
mkdir -p "$build" && build=$(cd "$build" && pwd)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(experiment_yaml experiment safetensors_header npy_header gguf_header llama2c_header hf_config llama2c_tokenizer)
fi
# LibTorch and HDF5 are not instrumented and keep one-time allocations: no leak checks.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_odr_violation=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1 SQLAB_THREADS=1

# Seeds per target, gathered into BUILD/fuzz-seeds/TARGET (file formats as the targets read them).
seeds=$build/fuzz-seeds
rm -rf "$seeds"
mkdir -p "$seeds"
/usr/bin/python3 - "$root" "$seeds" <<'PY'
import glob, os, struct, sys, hashlib
root, out = sys.argv[1], sys.argv[2]
def add(target, data):
    d = os.path.join(out, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb").write(data)
def files(*patterns):
    for p in patterns:
        for f in glob.glob(os.path.join(root, p), recursive=True):
            if os.path.isfile(f) and os.path.getsize(f) < 1 << 20:
                yield f, open(f, "rb").read()
for f, data in files("tests/bad_inputs/**/*.yaml", "experiments/*.yaml", "configs/**/*.yaml"):
    if not f.endswith("case.yaml"): add("experiment", data); add("experiment_yaml", data)
for f, data in files("tests/bad_inputs/**/*.safetensors"): add("safetensors_header", data)
for f, data in files("tests/bad_inputs/**/*.npy"): add("npy_header", data)
for f, data in files("tests/bad_inputs/**/*.bin"):
    if os.path.basename(f).startswith("tok"): add("llama2c_tokenizer", b"\0" + data)
    else: add("llama2c_header", struct.pack("<Q", os.path.getsize(f)) + data[:512])
for f, data in files("tests/bad_inputs/**/config.json"): add("hf_config", data)
for f, data in files("tests/fixtures/gguf/*.gguf", "tests/bad_inputs/**/*.gguf", "fuzz/regressions/gguf_header/*"):
    add("gguf_header", data)
for target in os.listdir(os.path.join(root, "fuzz", "seeds")) if os.path.isdir(os.path.join(root, "fuzz", "seeds")) else []:
    for f, data in files("fuzz/seeds/%s/*" % target): add(target, data)
PY

# One target: its summary line goes to BUILD/fuzz-TARGET.result (exit status 1 on a finding).
fuzz_target() {
  local target=$1 binary=$build/fuzz/fuzz_$1 result=$build/fuzz-$1.result
  if [ ! -x "$binary" ]; then
    echo "fuzz: $binary is missing (configure with -DSQLAB_FUZZ=ON and build fuzz_targets)" >&2
    printf '  %-20s MISSING\n' "$target" >"$result"
    return 1
  fi
  local corpus=$build/fuzz-corpus/$target artifacts=$build/fuzz-artifacts/$target/
  mkdir -p "$corpus" "$artifacts" "$seeds/$target"
  local dirs=("$corpus" "$seeds/$target")
  [ -d "$root/fuzz/regressions/$target" ] && dirs+=("$root/fuzz/regressions/$target")
  local log=$build/fuzz-$target.log started=$build/fuzz-$target.started  # newer artifacts: this run's
  touch "$started"
  echo "fuzz: $target for ${seconds}s (log: $log)"
  "$binary" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts" "${dirs[@]}" >"$log" 2>&1
  local rc=$?
  local runs cov
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ $rc -ne 0 ]; then
    printf '  %-20s FAILED (exit %s) after %s executions: %s\n' "$target" "$rc" "${runs:-?}" \
      "$(find "$artifacts" -type f -newer "$started" -printf '%f ' | head -c 300)" >"$result"
    grep -m5 -E 'ERROR|SUMMARY|terminate|what\(\)' "$log" >&2
    return 1
  fi
  printf '  %-20s ok: %s executions in %ss, %s\n' "$target" "${runs:-?}" "$seconds" "$cov" >"$result"
}

# FUZZ_JOBS targets at once (default 1: one core each; the machine's other work stays usable).
jobs=${FUZZ_JOBS:-1}
status=0
pids=()
for target in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  rm -f "$build/fuzz-$target.result"
  fuzz_target "$target" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "fuzz summary:"
for target in "${targets[@]}"; do cat "$build/fuzz-$target.result" 2>/dev/null || printf '  %-20s no result\n' "$target"; done
exit $status
