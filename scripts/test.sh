#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: set-up, formatting, lints, the
# ARM builds and the packages, then every unit, property, black-box, interop
# and qemu test on one shared build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/package.sh   # release hub for amd64, the agent for arm64 and armhf, and their .debs
PLANTD_PYTHON="$PWD/target/interop-venv/bin/python" cargo test --workspace --locked
