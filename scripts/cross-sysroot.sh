#!/usr/bin/env bash
# Builds a sysroot of the target architecture's libzmq (and what it links)
# under target/sysroot/<arch>, from Debian's own arm64/armhf packages,
# downloaded and unpacked rather than installed. So the Docker-less cross
# build works even when the mirror's per-architecture indexes are out of step
# (which breaks multiarch `apt-get install libzmq3-dev:arm64`).
#   scripts/cross-sysroot.sh arm64|armhf
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:?usage: scripts/cross-sysroot.sh arm64|armhf}"
case "$arch" in
  arm64|armhf) ;;
  *) echo "cross-sysroot: unknown architecture '$arch' (use arm64 or armhf)" >&2; exit 2 ;;
esac
sysroot="$PWD/target/sysroot/$arch"
[ -f "$sysroot/.done" ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
  $sudo dpkg --add-architecture "$arch"
fi
# A foreign architecture's index can fail to refresh (mirror mid-sync): what
# was fetched is enough to download packages, so only give up if nothing is known.
$sudo apt-get update -qq || echo "cross-sysroot: apt-get update reported errors; trying with the indexes we have" >&2

# libzmq5's runtime closure for this architecture, but the C runtime the
# cross toolchain brings; and libzmq3-dev alone, for the libzmq.so link.
packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances --no-pre-depends "libzmq5:$arch" 2>/dev/null \
  | grep -E "^[a-z0-9.+-]+:$arch\$" | sort -u \
  | grep -vE "^(libc6|libgcc-s1|libstdc\+\+6|gcc-12-base):")
packages="$packages libzmq3-dev:$arch"
if [ -z "$packages" ]; then
  echo "cross-sysroot: apt knows no libzmq5:$arch; check 'apt-get update' output" >&2
  exit 1
fi
downloads="target/sysroot/$arch.debs"
rm -rf "$downloads" "$sysroot"
mkdir -p "$downloads" "$sysroot"
(cd "$downloads" && apt-get download $packages 2>/dev/null)
for deb in "$downloads"/*.deb; do
  dpkg-deb -x "$deb" "$sysroot"
done
touch "$sysroot/.done"
echo "cross-sysroot: $(ls "$downloads" | wc -l) packages unpacked into $sysroot" >&2
