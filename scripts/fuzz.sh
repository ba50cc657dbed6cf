#!/usr/bin/env bash
# Fuzz the request reader, the contract parser and the renderers' round trip
# (fuzz/, cargo-fuzz on a nightly toolchain) for SECONDS each (default 60).
# New inputs go to a scratch directory; copy those worth keeping into
# fuzz/corpus/<target>/, where the stable tests replay them. A crash leaves its
# input in fuzz/artifacts/<target>/ and fails the script.
#   scripts/fuzz.sh [SECONDS]
# Exits 0 without fuzzing when there is no nightly toolchain (CI's smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain; skipped" >&2
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
scratch="$(mktemp -d /var/tmp/hostenv-fuzz.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
for target in request contract render; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 | tail -n 12
done
