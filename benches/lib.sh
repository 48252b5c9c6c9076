# Shared by the benchmark scripts (sourced): free ports and readiness.

# Ports below the kernel's ephemeral range: thousands of client sockets from
# the previous run may still hold ports inside it.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

wait_http() { # url
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/${1##*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server did not come up on $1:" >&2; tail -n 5 "$work"/*.log >&2
  exit 1
}
