#!/usr/bin/env bash
# The static host program for this build tree: hostenv installs only a static
# hostenv-host (a build linked to this machine's C library does not run on a
# host with an older one), and takes it from
# target/x86_64-unknown-linux-musl/<profile>/hostenv-host when run from
# target/<profile>/. The testbed builds it the same way before it starts.
#   scripts/host-program.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
cargo build --locked --quiet -p hostenv-host --target "$target" "$@"
profile=debug
[ "${1:-}" = --release ] && profile=release
echo "target/$target/$profile/hostenv-host"
