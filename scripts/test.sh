#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, unit and
# integration tests. Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# The real readers of the console's build-time .env (dotenv, dotenv-expand, Vite).
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
