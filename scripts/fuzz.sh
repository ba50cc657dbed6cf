#!/usr/bin/env bash
# Fuzz the request reader, the contract parser, the renderers' round trip and the
# lock holder's channel reader and the agent's readers of what a host answers
# (fuzz/, cargo-fuzz on a nightly toolchain).
#   scripts/fuzz.sh [SECONDS]   fuzz each target for SECONDS (default 60), random seed
#   scripts/fuzz.sh --smoke     CI's run: a fixed seed and a fixed number of runs per
#                               target, so what CI finds, anyone finds again
# New inputs go to a scratch directory; copy those worth keeping into
# fuzz/corpus/<target>/, where the stable tests replay them. A crash leaves its
# input in fuzz/artifacts/<target>/, prints the failure and the input (base64),
# and fails the script.
# Exits 0 without fuzzing when there is no nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --smoke ]; then
  limits=(-seed=1 -runs=30000)
else
  limits=(-max_total_time="${1:-60}")
fi
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain; skipped" >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
scratch="$(mktemp -d /var/tmp/hostenv-fuzz.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
for target in request contract render lock_channel host_answers; do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  echo "fuzz: $target (${limits[*]})" >&2
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    "${limits[@]}" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    # The panic's message and the input are what anyone needs to reproduce it.
    grep -m1 -A12 "panicked at\|ERROR: libFuzzer\|ERROR: AddressSanitizer" "$log" >&2 || tail -n 40 "$log" >&2
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    if [ -n "$artifact" ] && [ -f "$artifact" ]; then
      echo "fuzz: $target failed on $artifact, base64:" >&2
      base64 -w 0 "$artifact" >&2
      echo >&2
    fi
    exit 1
  fi
  tail -n 12 "$log" >&2
done
