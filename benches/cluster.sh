#!/usr/bin/env bash
# Cluster mode against one pod, in one session, with the same load generator:
#   benches/cluster.sh [--quick] [--repeats N] [--duration S] [--out FILE] [scenario ...]
# (default scenarios: fanout-1k personal). Per scenario, interleaved repeats
# of a single pod (the embedded default) and a cluster of two pods and a
# nats-server in operator mode (`switchboard nats init`). Every server
# process runs on core 0, the load generator on core 1; in the cluster the
# subscribers are spread over both pods and WebSocket publishes alternate
# between them, and CPU per delivery sums both pods and nats-server.
# Last, fanout-1k with every client on pod A of a cluster: what pod B
# (which has no subscriber of the channel) spends meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

repeats=3
duration=""
out="target/bench/cluster.jsonl"
scenarios=()
while (($#)); do
  case "$1" in
    --quick) repeats=1; duration=10 ;;
    --repeats) repeats="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) scenarios+=("$1") ;;
  esac
  shift
done
((${#scenarios[@]})) || scenarios=(fanout-1k personal)

command -v nats-server >/dev/null || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset is missing: apt-get install util-linux" >&2; exit 1; }
cargo build --release --quiet -p switchboard -p switchboard-bench --bins
bin=target/release
ulimit -n "$(ulimit -Hn)"
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
source benches/lib.sh

"$bin/switchboard" init --path "$work/sb.toml" --force >"$work/init.out"
api_key=$(sed -n 's/^API key for org demo (shown once, stored hashed): //p' "$work/init.out")

serve_pod() { # extra serve args...; sets pod_addr, pod_pid
  local port
  port=$(free_port)
  RUST_LOG=warn taskset -c 0 "$bin/switchboard" serve --config "$work/sb.toml" --data-dir "$work/data-$port" \
    --listen "127.0.0.1:$port" --publish-rate 0 --max-connections 200000 "$@" >/dev/null 2>>"$work/pods.log" &
  pod_pid=$!
  pids+=("$pod_pid")
  wait_http "127.0.0.1:$port"
  pod_addr="127.0.0.1:$port"
}

start_single() {
  serve_pod
  addrs=(--addr "$pod_addr")
  server_pids=(--server-pid "$pod_pid")
}

start_cluster() {
  local port mon
  rm -rf "$work/nats"
  "$bin/switchboard" nats init --out "$work/nats" >/dev/null
  port=$(free_port); mon=$(free_port)
  taskset -c 0 nats-server -c "$work/nats/nats-server.conf" -p "$port" -m "$mon" >/dev/null 2>"$work/nats.log" &
  local nats_pid=$!
  pids+=("$nats_pid")
  wait_http "127.0.0.1:$port"
  local url="nats://127.0.0.1:$port"
  serve_pod --nats-url "$url" --nats-dir "$work/nats"
  local a_addr=$pod_addr a_pid=$pod_pid
  serve_pod --nats-url "$url" --nats-dir "$work/nats"
  addrs=(--addr "$a_addr" --addr "$pod_addr")
  server_pids=(--server-pid "$a_pid" --server-pid "$pod_pid" --server-pid "$nats_pid")
  pod_a=(--addr "$a_addr")
  pod_b_pid=$pod_pid
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

run_once() { # target scenario label out duration
  local target=$1 scenario=$2 label=$3 dest=$4 secs=$5
  local args=(--scenario "$scenario" --label "$label" --out "$dest" --config "$work/sb.toml" --api-key "$api_key")
  [ -n "$secs" ] && args+=(--duration "$secs")
  if [ "$target" = switchboard ]; then start_single; else start_cluster; fi
  taskset -c 1 "$bin/switchboard-load" run --target "$target" "${addrs[@]}" "${server_pids[@]}" "${args[@]}" \
    || echo "run failed: $target $scenario" >&2
  stop_all
}

# CPU seconds (user + system) of a process so far.
cpu_s() {
  local tck
  tck=$(getconf CLK_TCK)
  awk -v t="$tck" '{ sub(/.*\) /, ""); print ($12 + $13) / t }' "/proc/$1/stat"
}

session="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for scenario in "${scenarios[@]}"; do
  echo "== $scenario: warm-up" >&2
  for target in switchboard cluster; do
    run_once "$target" "$scenario" warmup /dev/null 3
  done
  for rep in $(seq 1 "$repeats"); do
    for target in switchboard cluster; do
      echo "== $scenario: $target, repeat $rep/$repeats" >&2
      run_once "$target" "$scenario" "$session" "$out" "$duration"
    done
  done
done

echo "== fanout-1k on pod A only: pod B's CPU" >&2
start_cluster
b_before=$(cpu_s "$pod_b_pid")
taskset -c 1 "$bin/switchboard-load" run --target cluster "${pod_a[@]}" --scenario fanout-1k --label one-pod \
  --config "$work/sb.toml" --api-key "$api_key" ${duration:+--duration "$duration"} >"$work/one-pod.jsonl"
b_after=$(cpu_s "$pod_b_pid")
stop_all

echo
echo "medians of this session (ratio = cluster / single pod):"
grep -F "\"label\":\"$session\"" "$out" >"$work/session.jsonl" || true
"$bin/switchboard-load" report "$work/session.jsonl" --first cluster --second switchboard
delivered=$(sed -n 's/.*"delivered":\([0-9]*\).*/\1/p' "$work/one-pod.jsonl" | head -1)
echo
echo "fanout-1k with every client on pod A: pod B spent $(awk -v a="$b_after" -v b="$b_before" 'BEGIN { printf "%.2f", a - b }') CPU-s while pod A delivered ${delivered:-?} messages"
