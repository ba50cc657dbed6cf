#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md: deploy voxbridge to 1, 10 and 50 testbed hosts
# with hostenv (release build), with ansible-playbook (ansible-core from PyPI in a
# local venv), and with bare parallel OpenSSH commands (the lower bound),
# alternating them, several repetitions each. Run as root. Not part of CI.
#   scripts/bench.sh [REPETITIONS]           loopback, 1/10/50 hosts (default 5 repetitions)
#   scripts/bench.sh latency [REPETITIONS]   through a delay relay at RTT 0 and 60 ms: round trips
#   scripts/bench.sh canary [REPETITIONS]    hostenv alone through the relay: one batch and a canary deploy
#   scripts/bench.sh scale [REPETITIONS]     hostenv alone on 50, 100 and 200 hosts
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x /usr/bin/time ] || { apt-get update; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends time; }
venv=target/bench/venv
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "ansible-core==2.19.*"
fi
cargo build --release --quiet
cargo run --release --quiet --example bench -- "$@"
