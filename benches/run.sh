#!/usr/bin/env bash
# Benchmarks Switchboard against nats-server's WebSocket listener, in one
# session, with the same load generator:
#   benches/run.sh [--quick] [--repeats N] [--duration S] [--out FILE] [--plots DIR] [scenario ...]
# (rate-sweep stands for rate-100 rate-200 rate-400 rate-800)
# Each server runs alone on core 0, the load generator on core 1. Every
# scenario gets a warm-up run per target, then N interleaved repeats
# (switchboard, nats, switchboard, ...), each against a freshly started
# server. Prints medians and ratios; results stay in the JSON-lines file.
set -euo pipefail
cd "$(dirname "$0")/.."

repeats=5
duration=""
quick=""
out="target/bench/results.jsonl"
plots="target/bench"
scenarios=()
while (($#)); do
  case "$1" in
    --quick) quick=1; repeats=3; duration=10 ;;
    --repeats) repeats="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --out) out="$2"; shift ;;
    --plots) plots="$2"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) scenarios+=("$1") ;;
  esac
  shift
done
((${#scenarios[@]})) || scenarios=(fanout-1k burst burst-10 rate-sweep abuse fanout-10k personal turns idle connect-storm)
# rate-sweep: fanout-1k's shape at each paced rate.
expanded=()
for s in "${scenarios[@]}"; do
  if [ "$s" = rate-sweep ]; then expanded+=(rate-100 rate-200 rate-400 rate-800); else expanded+=("$s"); fi
done
scenarios=("${expanded[@]}")

command -v nats-server >/dev/null || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset is missing: apt-get install util-linux" >&2; exit 1; }
cargo build --release --quiet -p switchboard -p switchboard-bench --bins
bin=target/release
ulimit -n "$(ulimit -Hn)"
mkdir -p "$(dirname "$out")" "$plots"
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source benches/lib.sh

"$bin/switchboard" init --path "$work/sb.toml" --force >"$work/init.out"
api_key=$(sed -n 's/^API key for org demo (shown once, stored hashed): //p' "$work/init.out")

start_switchboard() {
  local port
  port=$(free_port)
  rm -rf "$work/data"
  RUST_LOG=warn taskset -c 0 "$bin/switchboard" serve --config "$work/sb.toml" --data-dir "$work/data" \
    --listen "127.0.0.1:$port" --publish-rate 0 --max-connections 200000 >/dev/null 2>"$work/sb.log" &
  server_pid=$!
  wait_http "127.0.0.1:$port"
  addr="127.0.0.1:$port"
}

start_nats() {
  local port ws mon
  port=$(free_port); ws=$(free_port); mon=$(free_port)
  cat >"$work/nats.conf" <<CONF
port: $port
http_port: $mon
max_connections: 200000
websocket { port: $ws, no_tls: true, compression: false }
CONF
  taskset -c 0 nats-server -c "$work/nats.conf" >/dev/null 2>"$work/nats.log" &
  server_pid=$!
  wait_http "127.0.0.1:$ws"
  wait_http "127.0.0.1:$port"
  addr="127.0.0.1:$ws"
  nats_url="nats://127.0.0.1:$port"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

run_once() { # target scenario label out duration
  local target=$1 scenario=$2 label=$3 dest=$4 secs=$5
  local args=(--scenario "$scenario" --label "$label" --out "$dest")
  [ -n "$secs" ] && args+=(--duration "$secs" --settle "$secs")
  if [ "$target" = switchboard ]; then
    start_switchboard
    args+=(--target switchboard --addr "$addr" --config "$work/sb.toml" --api-key "$api_key")
  else
    start_nats
    args+=(--target nats --addr "$addr" --nats-url "$nats_url")
  fi
  taskset -c 1 "$bin/switchboard-load" run "${args[@]}" --server-pid "$server_pid" || echo "run failed: $target $scenario" >&2
  stop_server
}

session="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for scenario in "${scenarios[@]}"; do
  echo "== $scenario: warm-up" >&2
  for target in switchboard nats; do
    run_once "$target" "$scenario" warmup /dev/null 3
  done
  for rep in $(seq 1 "$repeats"); do
    for target in switchboard nats; do
      echo "== $scenario: $target, repeat $rep/$repeats" >&2
      run_once "$target" "$scenario" "$session" "$out" "$duration"
    done
  done
done

echo
echo "medians of this session (ratio = switchboard / nats):"
grep -F "\"label\":\"$session\"" "$out" >"$work/session.jsonl" || true
"$bin/switchboard-load" report "$work/session.jsonl" --plot-dir "$plots"
