# Sourced by scripts that need a running `flashmart demo`: starts one in a temporary directory on
# a free loopback port and tells its address. The caller sets `work` (a temporary directory it
# removes) and calls demo_stop on exit.
#
#   demo_start BIN [NAME=VALUE ...]   environment for the server; sets $server (pid), $base (URL)
#   demo_stop                         stops the server started last
#   demo_login EMAIL PASSWORD         prints an access token

demo_start() {
  local bin=$1
  shift
  local log="$work/server-$RANDOM.log"
  (cd "$work" && exec env FLASHMART__HTTP__ADDR=127.0.0.1:0 FLASHMART__LOG__FORMAT=json \
    FLASHMART__RATE_LIMIT__ENABLED=false FLASHMART__DATA_DIR="$work/data-$RANDOM" "$@" \
    "$bin" demo) 2>"$log" &
  server=$!
  base=""
  for _ in $(seq 1 600); do
    base=$(python3 - "$log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if str(event.get("message", "")).startswith("flashmart listening"):
        print("http://" + event["addr"])
        break
PY
)
    [ -n "$base" ] && return 0
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "the server did not start" >&2
  cat "$log" >&2
  return 1
}

demo_stop() {
  if [ -n "${server:-}" ]; then
    kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    server=""
  fi
  return 0
}

demo_login() {
  curl -sf "$base/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\": \"$1\", \"password\": \"$2\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["access_token"])'
}
