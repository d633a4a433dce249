#!/usr/bin/env bash
# Debian packages, into target/debian/:
#   scripts/package.sh          # plantd-hub (amd64) and plantd-agent (arm64, armhf)
#   scripts/package.sh hub      # plantd-hub only
#   scripts/package.sh agent    # plantd-agent only (cross-builds it as needed)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
if [ "$what" = hub ] || [ "$what" = all ]; then
  cargo build --release --locked -p hub --bin hub
  cargo deb -p hub --no-build --no-strip
fi
if [ "$what" = agent ] || [ "$what" = all ]; then
  for arch in arm64 armhf; do
    scripts/cross-build.sh "$arch"
    case "$arch" in
      arm64) triple=aarch64-unknown-linux-gnu ;;
      armhf) triple=armv7-unknown-linux-gnueabihf ;;
    esac
    cargo deb -p agent --target "$triple" --no-build --no-strip
  done
fi
ls -1 target/debian/*.deb target/*/debian/*.deb 2>/dev/null || true
