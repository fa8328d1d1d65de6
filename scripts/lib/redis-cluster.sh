# Sourced by scripts that need a Redis Cluster of their own: three masters from the
# `redis-server` binary (scripts/setup installs it) on free loopback ports, every slot served,
# nothing kept on disk beyond a temporary directory.
#
#   cluster_start     starts it; sets $cluster_nodes ("redis://127.0.0.1:P1,redis://...")
#   cluster_stop      stops it and removes its directory

cluster_start() {
  cluster_dir=$(mktemp -d)
  cluster_ports=()
  local port addrs=() pid attempts=0
  while [ "${#cluster_ports[@]}" -lt 3 ]; do
    attempts=$((attempts + 1))
    [ "$attempts" -le 10 ] || { echo "no Redis Cluster node could start" >&2; return 1; }
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
      --logfile "$cluster_dir/$port/redis.log" >/dev/null 2>&1 &
    pid=$!
    if cluster_node_up "$port" "$pid"; then
      cluster_ports+=("$port")
      addrs+=("127.0.0.1:$port")
    else
      echo "a Redis Cluster node did not start on $port: $(tail -1 "$cluster_dir/$port/redis.log")" >&2
      kill "$pid" 2>/dev/null || true
    fi
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

# Whether the node started as process PID serves PORT: the server answering there reports that
# process id. A port found free can be taken by another process before redis-server binds it; the
# node then stops, and another server (another Redis) may be the one answering.
cluster_node_up() {
  local port=$1 pid=$2
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || return 1
    redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null | tr -d '\r' |
      grep -qx "process_id:$pid" && return 0
    sleep 0.1
  done
  return 1
}

cluster_stop() {
  local port
  for port in "${cluster_ports[@]:-}"; do
    [ -n "$port" ] && redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  [ -n "${cluster_dir:-}" ] && rm -rf "$cluster_dir"
  cluster_ports=()
}
