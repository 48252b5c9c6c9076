#!/usr/bin/env bash
# A rolling restart under load, measured: three pods in cluster mode on one
# nats-server behind HAProxy (health-checked on /ready, as a Kubernetes
# Service would), 20 subscribers resuming with `since`, 4 publishers at
# 50 msg/s each over HTTP, 4 agents streaming turns; the pods are replaced
# one at a time (SIGTERM after the replacement is ready). It fails unless
# every acknowledged message reached every subscriber once, in order, every
# finished turn arrived whole and no operator session was lost, and prints
# delivery latency during the roll against the steady run before it.
#
#   benches/rollout.sh                 # 20 s steady, then the roll
#   ROLLOUT_STEADY_SECS=60 benches/rollout.sh
#
# The same code runs, shorter, in the test suite (tests/rollout.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nats-server haproxy; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    echo "needs $tool (scripts/test.sh installs it)" >&2
    exit 1
  }
done
cargo test --release --locked --test integration --no-run >/dev/null 2>&1 || cargo test --release --locked --test integration --no-run
ROLLOUT_STEADY_SECS="${ROLLOUT_STEADY_SECS:-20}" \
  cargo test --release --locked --test integration rollout:: -- --nocapture --test-threads 1 2>&1 |
  grep -E 'rollout: |delivery latency|panicked|test result'
