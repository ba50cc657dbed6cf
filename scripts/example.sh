#!/usr/bin/env bash
# Runs hostenv on the built-in examples: `check` of every example request with the
# stand-in credentials in examples/example.env, then `build-env` of the console.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
bin=target/debug/hostenv
set -a
# shellcheck disable=SC1091
. examples/example.env
set +a
for request in examples/voxbridge.json examples/voxcore.json examples/voxdialler.json examples/rotation.json; do
  echo "== hostenv check --request $request" >&2
  "$bin" check --request "$request"
done
mkdir -p target/console
echo "== hostenv build-env --request examples/console.json" >&2
"$bin" build-env --request examples/console.json
echo "== target/console/.env" >&2
cat target/console/.env >&2
