#!/usr/bin/env bash
# The main job: the hub on its embedded defaults (broker on
# tcp://127.0.0.1:9797, data in ./data/hub). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
exec target/release/hub serve "$@"
