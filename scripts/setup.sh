#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu/Raspberry Pi OS machine with Rust lacks
# for building and testing plantd-edge. Safe to run again: it only adds what
# is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: libzmq with CURVE (linked instead of the bundled copy, see
# .cargo/config.toml), pkg-config, venv for the Python interop peers,
# qemu-user to run the ARM builds (scripts/cross-build.sh installs the cross
# compilers it needs itself), and Debian's chromium, the headless browser
# tests/system/web.rs drives the hub's web view in, and nats-server (JetStream),
# the NATS the bridge's tests (tests/system/bridge.rs) export into, and socat,
# which pairs two pseudo-terminals for the Modbus RTU tests
# (tests/system/modbus.rs), and mosquitto, the MQTT broker the Sparkplug B
# tests (tests/system/sparkplug.rs) start.
packages=(libzmq3-dev pkg-config python3-venv qemu-user chromium nats-server socat mosquitto)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python peers (majortomo, pyzmq, pymodbus, paho-mqtt) in a venv under target/, rebuilt
# when the pinned requirements change.
venv=target/interop-venv
stamp="$venv/.requirements"
if ! cmp -s tests/interop/requirements.txt "$stamp" 2>/dev/null; then
  echo "setup: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt
  cp tests/interop/requirements.txt "$stamp"
fi
