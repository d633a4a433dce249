#!/usr/bin/env bash
# The main job: the hub on its embedded defaults (broker tcp://127.0.0.1:9797,
# buses on plantd's ports, data in ./data/hub) with one simulated agent
# (./data/agent), and a tap on the metric bus so you can watch the data flow.
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
bin=target/release

pids=()
# Ctrl-C reaches all three already; a second signal would make them skip
# their graceful stop, so only signal what is still running after a moment.
stop() {
  trap - EXIT INT TERM
  for _ in $(seq 30); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$bin/hub" serve "$@" &
pids+=($!)
"$bin/agent" run --board sim --id demo-agent &
pids+=($!)
echo "hub and a simulated agent are running; telemetry follows (Ctrl-C to stop)" >&2
echo "the live web view: http://127.0.0.1:8081/   (hub agents: target/release/hub agents)" >&2
"$bin/hub" tap --name metric
