#!/usr/bin/env bash
# Installs what hostenv's examples and tests need on a fresh Debian machine of
# this project's kind: systemd, OpenSSH, sudo, Python and strace for the
# testbed hosts, debootstrap and the trees of the other Debian generations
# the testbed boots, iptables for the fault tests, musl-tools and Rust's musl target for
# the static release build, Node for the Vite round-trip tests, Groovy 2.4 (the Groovy
# Jenkins runs) and git for the library's tests, check-jsonschema for the
# Bitbucket Pipelines example, and the Rust lints.
set -euo pipefail

missing=()
for need in /usr/lib/systemd/systemd:systemd /usr/sbin/sshd:openssh-server /usr/bin/sudo:sudo \
            /usr/bin/python3:python3 /usr/bin/nsenter:util-linux /usr/bin/strace:strace \
            /usr/bin/groovy:groovy /usr/bin/git:git /usr/sbin/iptables:iptables \
            /usr/bin/musl-gcc:musl-tools /usr/sbin/debootstrap:debootstrap; do
  [ -e "${need%%:*}" ] || missing+=("${need##*:}")
done
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  # Packages must not start their services here (an sshd on *:22 would take the
  # testbed hosts' port); policy-rc.d says no for the length of the install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
# Atlassian's published schema for bitbucket-pipelines.yml ships with check-jsonschema.
tools="$(cd "$(dirname "$0")/.." && pwd)/target/tools"
if [ ! -x "$tools/venv/bin/check-jsonschema" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check check-jsonschema==0.39.0
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
# The static builds: the host program every run installs (scripts/host-program.sh,
# which the testbed runs) and the release (scripts/release.sh, and the test that runs it).
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
# Testbed hosts of the other Debian generations (tests/integration/generations.rs):
# each suite's minimal tree with the programs a host runs, made once and kept
# (about 300 MB and a minute each); the hosts never write to it.
trees=${HOSTENV_TESTBED_TREES:-/var/cache/hostenv-testbed}
for suite in bullseye trixie sid; do
  [ -x "$trees/$suite/usr/sbin/sshd" ] && continue
  mkdir -p "$trees"
  rm -rf "${trees:?}/$suite.new"
  debootstrap --variant=minbase --include=systemd,openssh-server,sudo,python3,iproute2,procps,dbus \
    "$suite" "$trees/$suite.new" http://deb.debian.org/debian
  mv -T "$trees/$suite.new" "$trees/$suite"
done
