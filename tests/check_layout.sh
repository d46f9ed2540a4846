#!/usr/bin/env bash
# The include rules of README "Layout of the code", checked on every project include
# ("folder/file.h") of every source folder. Prints each include that breaks a rule and
# exits 1; exits 0 when all hold. Run by ctest as `layout_rules`.
set -euo pipefail

# --self-test: a tree with one broken rule must fail, the same tree fixed must pass.
if [ "${1:-}" = "--self-test" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp"/{io,rotations,quant,core,methods,tasks,model,datasets,app}
  printf '#include "core/error.h"\n#include "core/config.h"\n' > "$tmp/rotations/kernel.cpp"
  if "$0" "$tmp" > "$tmp/out.txt"; then echo "self-test: a broken rule passed"; exit 1; fi
  grep -q 'rotations/kernel.cpp includes "core/config.h"' "$tmp/out.txt" || { cat "$tmp/out.txt"; exit 1; }
  printf '#include "core/error.h"\n' > "$tmp/rotations/kernel.cpp"
  "$0" "$tmp" > "$tmp/out.txt" || { echo "self-test: a clean tree failed"; cat "$tmp/out.txt"; exit 1; }
  echo "self-test: passed"; exit 0
fi
cd "${1:-$(dirname "$0")/..}"

# folder -> what its files may include besides their own folder (space-separated
# prefixes; a prefix ending in .h is one file).
declare -A allowed=(
  [io]="core/error.h core/json_nesting.h core/torch_compat.h"
  [rotations]="core/error.h core/rotation.h core/torch_compat.h"
  [quant]="core/error.h core/rotation.h core/site.h core/run_record.h core/torch_compat.h rotations/simd.h rotations/hadamard_cuda.h"
  [core]="quant/ rotations/ io/"
  [methods]="core/ quant/ rotations/ io/"
  [tasks]="core/ io/"
  [model]="tasks/ methods/ core/ quant/ rotations/ io/"
  [datasets]="model/ tasks/ core/ quant/ rotations/ io/"
  [app]="datasets/ model/ tasks/ methods/ core/ quant/ rotations/ io/"
)

violations=0
checked=0
for folder in "${!allowed[@]}"; do
  [ -d "$folder" ] || { echo "layout: folder $folder/ is missing"; violations=$((violations + 1)); continue; }
  while IFS= read -r file; do
    while IFS= read -r line; do
      include=${line#*\"}
      include=${include%%\"*}
      [[ $include == */* ]] || continue  # system-style or same-folder short names
      checked=$((checked + 1))
      [[ $include == "$folder/"* ]] && continue
      ok=0
      for prefix in ${allowed[$folder]}; do
        if [[ $prefix == *.h ]]; then [[ $include == "$prefix" ]] && ok=1
        else [[ $include == "$prefix"* ]] && ok=1; fi
      done
      if [ $ok -eq 0 ]; then
        echo "layout: $file includes \"$include\": $folder/ may include only $folder/ and: ${allowed[$folder]}"
        violations=$((violations + 1))
      fi
    done < <(grep -E '^\s*#\s*include\s+"' "$file" || true)
  done < <(find "$folder" -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' | sort)
done

# Nothing but app/ itself includes app/ (tests drive the binary, not its sources).
while IFS= read -r hit; do
  echo "layout: $hit: only app/ may include app/"
  violations=$((violations + 1))
done < <(grep -rnE '^\s*#\s*include\s+"app/' --include='*.h' --include='*.cpp' \
           core rotations quant io methods tasks model datasets tests bench fuzz tools 2>/dev/null || true)

if [ $violations -gt 0 ]; then
  echo "layout: $violations include(s) break the rules (README \"Layout of the code\")"
  exit 1
fi
echo "layout: $checked project includes follow the rules"
