#!/usr/bin/env bash
# The main job on built-in examples: `hostenv check` of every example request and
# `hostenv build-env` of the console with the stand-in credentials of
# examples/example.env, then a real `hostenv deploy` of examples/voxbridge.json
# to a throwaway local host (run as root). Every result is printed as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet
bin=target/debug/hostenv
(
  set -a
  # shellcheck disable=SC1091
  . examples/example.env
  set +a
  for request in examples/voxbridge.json examples/voxcore.json examples/voxdialler.json examples/rotation.json; do
    echo "== hostenv check --request $request" >&2
    "$bin" check --request "$request"
  done
)
mkdir -p target/console
echo "== hostenv build-env --request examples/console.json" >&2
"$bin" build-env --request examples/console.json
echo "== target/console/.env" >&2
cat target/console/.env >&2
cargo run --quiet --example local_deploy
