#!/usr/bin/env bash
# Runs an ARM build of ours on an x86-64 Debian/Ubuntu host under qemu-user:
#   scripts/qemu-run.sh arm64 target/aarch64-unknown-linux-gnu/release/agent once --board sim
#   scripts/qemu-run.sh armhf target/armv7-unknown-linux-gnueabihf/release/agent check
# Needs what scripts/cross-build.sh installs (the cross toolchain's C library
# and the target's libzmq unpacked under target/sysroot/<arch>).
#
# Why not `qemu-aarch64 -L /usr/aarch64-linux-gnu`: under -L, qemu looks each
# path up in the prefix first and falls back to the host's own file. On a host
# with the multiarch libc6:arm64 installed, the loader then comes from the cross
# toolchain but libc.so.6 from /lib/aarch64-linux-gnu, a different build, and the
# first pthread_create spins forever. Starting the cross loader ourselves with an
# explicit library path (cross glibc first) takes no host fallback on any host.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:?usage: scripts/qemu-run.sh arm64|armhf BINARY [ARGS...]}"
binary="${2:?usage: scripts/qemu-run.sh arm64|armhf BINARY [ARGS...]}"
shift 2
case "$arch" in
  arm64) qemu=qemu-aarch64; tuple=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1 ;;
  armhf) qemu=qemu-arm; tuple=arm-linux-gnueabihf; loader=ld-linux-armhf.so.3 ;;
  *) echo "qemu-run: unknown architecture '$arch' (use arm64 or armhf)" >&2; exit 2 ;;
esac
libc="/usr/$tuple/lib"
sysroot="$PWD/target/sysroot/$arch"
for need in "$libc/$loader" "$sysroot/.done"; do
  if [ ! -e "$need" ]; then
    echo "qemu-run: $need is missing: run scripts/cross-build.sh $arch first" >&2
    exit 1
  fi
done
command -v "$qemu" >/dev/null || { echo "qemu-run: $qemu not found: apt-get install qemu-user" >&2; exit 1; }
exec "$qemu" "$libc/$loader" --library-path "$libc:$sysroot/usr/lib/$tuple:$sysroot/lib/$tuple" "$binary" "$@"
