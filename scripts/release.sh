#!/usr/bin/env bash
# A release anyone can verify: fully static Linux binaries (x86_64 musl, OpenSSL
# compiled in), packed as target/dist/hostenv-<version>-x86_64-linux.tar.gz with
# target/dist/SHA256SUMS. The archive is deterministic (sorted, owner 0, mtime
# of the commit), so a rebuild of the same commit gives the same checksum.
#   scripts/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v musl-gcc >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools
fi
CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build --release --locked --target "$target" -p hostenv --features static --bins
cargo build --release --locked --target "$target" -p hostenv-host
bin="target/$target/release"
version=$("$bin/hostenv" version)
version=${version#hostenv }
name="hostenv-$version-x86_64-linux"
dist=target/dist
rm -rf "$dist/$name"
mkdir -p "$dist/$name"
install -m 755 "$bin/hostenv" "$bin/hostenv-host" "$dist/$name/"
install -m 644 README.md SECURITY.md CHANGELOG.md LICENSE "$dist/$name/"
install -d "$dist/$name/docs"
install -m 644 docs/*.md "$dist/$name/docs/"
# Everything those pages link to, so that the archive reads on its own (a test
# follows every relative link of the shipped pages inside the unpacked archive).
install -m 644 BENCHMARKS.md CONTRIBUTING.md Jenkinsfile.example "$dist/$name/"
git ls-files -z examples resources schema bench | tar --null -T - -cf - | tar -C "$dist/$name" -xf -
mtime=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -C "$dist" -cf - "$name" | gzip -n -9 > "$dist/$name.tar.gz"
# The archive, and each program in it: the Jenkins steps pin all three
# (HOSTENV_RELEASE_SHA256, HOSTENV_SHA256, HOSTENV_HOST_SHA256).
(cd "$dist" && sha256sum "$name.tar.gz" "$name/hostenv" "$name/hostenv-host" > SHA256SUMS)
rm -rf "${dist:?}/$name"
echo "$dist/$name.tar.gz"
