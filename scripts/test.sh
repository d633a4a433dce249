#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: set-up, formatting, lints, then
# every unit, property, black-box and interop test on one shared build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
PLANTD_PYTHON="$PWD/target/interop-venv/bin/python" cargo test --workspace --locked
