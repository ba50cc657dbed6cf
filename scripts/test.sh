#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, unit and
# integration tests (the testbed's real hosts included; run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The real readers of the console's build-time .env (dotenv, dotenv-expand, Vite).
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test

# A short fuzzing smoke run (fixed seed, fixed runs) when a nightly toolchain is present.
bash scripts/fuzz.sh --smoke
