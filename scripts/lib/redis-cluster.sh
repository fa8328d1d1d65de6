# Sourced by scripts that need a Redis Cluster of their own: three masters from the
# `redis-server` binary (scripts/setup installs it) on free loopback ports, every slot served,
# nothing kept on disk beyond a temporary directory.
#
#   cluster_start     starts it; sets $cluster_nodes ("redis://127.0.0.1:P1,redis://...")
#   cluster_stop      stops it and removes its directory

cluster_start() {
  cluster_dir=$(mktemp -d)
  cluster_ports=()
  local port addrs=() i
  for i in 1 2 3; do
    # A free port whose cluster bus port (port + 10000) is free and a port too.
    port=$(python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    if port < 55000:
        try:
            socket.socket().bind(("127.0.0.1", port + 10000))
            print(port)
            break
        except OSError:
            pass')
    mkdir -p "$cluster_dir/$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file nodes.conf --save "" --appendonly no --dir "$cluster_dir/$port" \
      --daemonize yes --logfile "$cluster_dir/$port/redis.log" --pidfile "$cluster_dir/$port/redis.pid"
    cluster_ports+=("$port")
    addrs+=("127.0.0.1:$port")
  done
  for port in "${cluster_ports[@]}"; do
    for _ in $(seq 1 200); do
      [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && break
      sleep 0.1
    done
    [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] ||
      { echo "a Redis Cluster node did not start: $(tail -3 "$cluster_dir/$port/redis.log")" >&2; return 1; }
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  for port in "${cluster_ports[@]}"; do
    for _ in $(seq 1 200); do
      redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok && break
      sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok ||
      { echo "the Redis Cluster did not come up (node $port)" >&2; return 1; }
  done
  cluster_nodes=$(printf 'redis://%s,' "${addrs[@]}")
  cluster_nodes=${cluster_nodes%,}
}

cluster_stop() {
  local port
  for port in "${cluster_ports[@]:-}"; do
    [ -n "$port" ] && redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  [ -n "${cluster_dir:-}" ] && rm -rf "$cluster_dir"
  cluster_ports=()
}
