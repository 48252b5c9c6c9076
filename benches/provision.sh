#!/usr/bin/env bash
# Cluster-mode provisioning, measured against a real nats-server in operator
# mode: first use of an org, adoption on a second pod, memory per org
# connection, idle close, start-up with many known orgs.
#   benches/provision.sh [--orgs N] [--known K] [--idle-secs S]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin switchboard -p switchboard
cargo build --release -q --bin switchboard-provision -p switchboard-bench
work=$(mktemp -d)
trap 'kill "$nats" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/switchboard nats init --out "$work/nats" --port "$port" --http-port "$http" >/dev/null
nats-server -c "$work/nats/nats-server.conf" >"$work/nats.log" 2>&1 &
nats=$!
for _ in $(seq 100); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
target/release/switchboard-provision --nats-url "nats://127.0.0.1:$port" \
  --nats-dir "$work/nats" --nats-pid "$nats" "$@"
