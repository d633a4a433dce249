#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: set-up, formatting, lints, the
# ARM builds and the packages, then every unit, property, black-box, interop
# and qemu test on one shared build.
#
# Each stage has a time budget, several times what it takes on a 2-core
# machine: a stuck stage is stopped and named long before CI's own limit,
# instead of running into it and landing nothing. Tests bound their own waits
# too (see tests/src/process.rs); the budgets are the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# stage NAME BUDGET_SECONDS COMMAND...
stage() {
  local name=$1 budget=$2 started=$SECONDS status=0
  shift 2
  echo "test.sh: ${name} (budget ${budget}s)" >&2
  # timeout signals the command's whole process group: test binaries and the hubs,
  # agents and qemu processes they started go with it.
  timeout --kill-after=20 "$budget" "$@" || status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "test.sh: FAILED: '${name}' ran past its budget of ${budget}s and was stopped" >&2
    exit 1
  elif [ "$status" -ne 0 ]; then
    echo "test.sh: FAILED: '${name}' exited with status ${status}" >&2
    exit "$status"
  fi
  echo "test.sh: ${name} passed in $((SECONDS - started))s" >&2
}

# Budgets sum to 66 minutes, against CI's 90-minute limit; a whole run
# takes about a quarter of that (figures in the README).
stage "set-up" 600 scripts/setup.sh
stage "formatting" 60 cargo fmt --all --check
stage "lints" 600 cargo clippy --workspace --all-targets --locked -- -D warnings
# The release hub for amd64, the agent for arm64 and armhf, and their .debs.
stage "ARM builds and packages" 900 scripts/package.sh
stage "test build" 900 cargo test --workspace --locked --no-run
stage "tests" 900 env PLANTD_PYTHON="$PWD/target/interop-venv/bin/python" cargo test --workspace --locked
echo "test.sh: all stages passed in $((SECONDS / 60))m$((SECONDS % 60))s" >&2
