#!/usr/bin/env bash
# Builds the agent for a Raspberry Pi without Docker, on a Debian/Ubuntu host:
#   scripts/cross-build.sh arm64     # Pi 3/4/5 and Zero 2 W on a 64-bit OS
#   scripts/cross-build.sh armhf     # the same boards on a 32-bit OS
# Installs Debian's cross compiler and the Rust target if missing, unpacks the
# target's libzmq into target/sysroot/<arch>, and leaves the binary in
# target/<triple>/release/agent. Extra arguments go to cargo (e.g. -p hub).
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:?usage: scripts/cross-build.sh arm64|armhf [cargo args]}"
shift
case "$arch" in
  arm64) triple=aarch64-unknown-linux-gnu; tuple=aarch64-linux-gnu ;;
  armhf) triple=armv7-unknown-linux-gnueabihf; tuple=arm-linux-gnueabihf ;;
  *) echo "cross-build: unknown architecture '$arch' (use arm64 or armhf)" >&2; exit 2 ;;
esac

missing=()
for pkg in "gcc-$tuple" "g++-$tuple"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
scripts/cross-sysroot.sh "$arch"

sysroot="$PWD/target/sysroot/$arch"
var=$(echo "$triple" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${var}_LINKER=$tuple-gcc"
export "CARGO_TARGET_${var}_RUSTFLAGS=-L native=$sysroot/usr/lib/$tuple -C link-arg=-Wl,-rpath-link,$sysroot/usr/lib/$tuple -C link-arg=-Wl,-rpath-link,$sysroot/lib/$tuple"
if [ $# -eq 0 ]; then
  set -- -p agent
fi
cargo build --release --locked --target "$triple" "$@"
echo "cross-build: target/$triple/release/" >&2
