#!/usr/bin/env bash
# Compares two Switchboard builds on fanout-1k in one session, beside
# nats-server: benches/compare-builds.sh OLD_SWITCHBOARD_BINARY [REPEATS]
# (build the old one with e.g. `git worktree add /tmp/old REV && cd /tmp/old &&
# cargo build --release -p switchboard`). Each repeat runs new, old, nats and
# then old, new, nats in turn, so neither build always follows the other:
# a run right after another one pays a little more kernel time.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 1; }
cargo build --release --quiet -p switchboard -p switchboard-bench --bins
bin=target/release
old=${1:?usage: benches/compare-builds.sh OLD_SWITCHBOARD_BINARY [REPEATS]}
repeats=${2:-3}
out=target/bench/compare.jsonl
mkdir -p target/bench
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
free_port() { local p; while :; do p=$((10000 + RANDOM % (ephemeral_low - 10000))); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }; done; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "no server on $1" >&2; exit 1; }
"$bin/switchboard" init --path "$work/new.toml" --force >"$work/new.out"
"$old" init --path "$work/old.toml" --force >"$work/old.out"
key() { sed -n 's/^API key for org demo (shown once, stored hashed): //p' "$1"; }
for rep in $(seq 1 "$repeats"); do
  order="new old nats"; [ $((rep % 2)) -eq 0 ] && order="old new nats"
  for t in $order; do
    port=$(free_port)
    case $t in
      old) RUST_LOG=warn taskset -c 0 "$old" serve --config "$work/old.toml" --listen "127.0.0.1:$port" --publish-rate 0 --max-connections 200000 >/dev/null 2>&1 & pid=$!
           wait_port $port; args=(--target switchboard --addr "127.0.0.1:$port" --config "$work/old.toml" --api-key "$(key $work/old.out)" --label old) ;;
      new) rm -rf "$work/data"; RUST_LOG=warn taskset -c 0 "$bin/switchboard" serve --config "$work/new.toml" --data-dir "$work/data" --listen "127.0.0.1:$port" --publish-rate 0 --max-connections 200000 >/dev/null 2>&1 & pid=$!
           wait_port $port; args=(--target switchboard --addr "127.0.0.1:$port" --config "$work/new.toml" --api-key "$(key $work/new.out)" --label new) ;;
      nats) np=$(free_port); mon=$(free_port)
           printf 'port: %s\nhttp_port: %s\nmax_connections: 200000\nwebsocket { port: %s, no_tls: true, compression: false }\n' $np $mon $port > "$work/nats.conf"
           taskset -c 0 nats-server -c "$work/nats.conf" >/dev/null 2>&1 & pid=$!
           wait_port $port; wait_port $np; args=(--target nats --addr "127.0.0.1:$port" --nats-url "nats://127.0.0.1:$np" --label nats) ;;
    esac
    echo "== $t, repeat $rep" >&2
    taskset -c 1 "$bin/switchboard-load" run --scenario fanout-1k --duration 30 "${args[@]}" --server-pid $pid --out "$out"
    kill $pid; wait $pid 2>/dev/null || true
  done
done
# The report groups by target (both builds are "switchboard"): one file per build.
for build in old new; do grep -F -e "\"label\":\"$build\"" -e '"label":"nats"' "$out" >"target/bench/compare-$build.jsonl"; done
echo "medians: $bin/switchboard-load report target/bench/compare-old.jsonl (and -new)" >&2
