#!/usr/bin/env bash
# Every README block marked `<!-- file: PATH -->` (the fenced block right after the marker)
# must be the file PATH, byte for byte: the README shows files as they are.
#   tests/check_readme_files.sh ROOT      checks ROOT/README.md against the files under ROOT
#   tests/check_readme_files.sh --self-test   a README that differs from its file must fail
set -euo pipefail

check() {
  local root=$1 status=0 count=0
  local readme="$root/README.md"
  while IFS= read -r path; do
    count=$((count + 1))
    # The block after the marker: from the line after the opening fence to the closing one.
    local block
    block=$(awk -v marker="<!-- file: $path -->" '
      $0 == marker {found = 1; next}
      found == 1 && /^```/ {found = 2; next}
      found == 2 && /^```$/ {exit}
      found == 2 {print}' "$readme")
    if [[ ! -f "$root/$path" ]]; then
      echo "README.md names $path, which does not exist" >&2
      status=1
    elif ! diff -u --label "$path" --label "README.md block" "$root/$path" <(printf '%s\n' "$block") >&2; then
      echo "README.md's block for $path differs from the file (above)" >&2
      status=1
    fi
  done < <(sed -n 's/^<!-- file: \(.*\) -->$/\1/p' "$readme")
  if [[ $count -eq 0 ]]; then
    echo "README.md has no <!-- file: PATH --> block" >&2
    return 1
  fi
  [[ $status -eq 0 ]] && echo "$count README block(s) match their files"
  return $status
}

if [[ "${1:-}" == "--self-test" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/experiments"
  printf 'name: a\nseeds: [0]\n' > "$tmp/experiments/a.yaml"
  printf '# x\n\n<!-- file: experiments/a.yaml -->\n```yaml\nname: a\nseeds: [0]\n```\n' > "$tmp/README.md"
  check "$tmp" > /dev/null || { echo "self-test: a matching block was rejected" >&2; exit 1; }
  printf '# x\n\n<!-- file: experiments/a.yaml -->\n```yaml\nname: a\nseeds: [0, 1]\n```\n' > "$tmp/README.md"
  if check "$tmp" 2> /dev/null; then echo "self-test: a differing block passed" >&2; exit 1; fi
  echo "self-test passed"
  exit 0
fi
check "${1:?usage: check_readme_files.sh ROOT | --self-test}"
