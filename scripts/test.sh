#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, unit and
# integration tests. Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The testbed's hosts (tests/integration/testbed.rs): systemd, OpenSSH, sudo and
# Python for the stand-in services. Node runs the real Vite readers.
missing=()
for need in /usr/lib/systemd/systemd:systemd /usr/sbin/sshd:openssh-server /usr/bin/sudo:sudo \
            /usr/bin/python3:python3 /usr/bin/nsenter:util-linux /usr/bin/strace:strace; do
  [ -e "${need%%:*}" ] || missing+=("${need##*:}")
done
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# The real readers of the console's build-time .env (dotenv, dotenv-expand, Vite).
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
