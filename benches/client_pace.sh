#!/usr/bin/env bash
# How fast the pacing client gets through limiters, against the ideal time
# each limit allows: the example client (`examples/client.rs`, eight workers
# unless WORKERS says) through the example gateway on qstash.json, nginx's
# `limit_req` in both modes, and Flask-Limiter in its three strategies, on
# loopback ports of their own. Prints one line per server: requests, the
# ideal time, the time taken, their ratio, and the client's retries (429s).
#
#   bash benches/client_pace.sh            # WORKERS=8
#   WORKERS=1 bash benches/client_pace.sh
#
# About 3 minutes in all, plus the release build. Needs nginx and Python's
# flask-limiter (skipped with a note when missing). Client and servers share
# the machine's cores: compare the ratios, not the seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-8}
cargo build --release --features full --example gateway --example client >&2
BIN=target/release/examples
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }

# run NAME URL REQUESTS IDEAL_SECONDS [HEADER]
run() {
  local name=$1 url=$2 n=$3 ideal=$4 header=${5:-}
  local args=(--url "$url" --requests "$n" --concurrency "$WORKERS")
  [ -n "$header" ] && args+=(--header "$header")
  local start end out
  start=$(date +%s.%N)
  out=$("$BIN/client" "${args[@]}" 2>/dev/null | tail -1)
  end=$(date +%s.%N)
  python3 - "$name" "$n" "$ideal" "$start" "$end" "$out" <<'PY'
import json, sys
name, n, ideal, start, end, out = sys.argv[1:]
took = float(end) - float(start)
o = json.loads(out)
print(f"{name:<48} {n:>4} req  ideal {float(ideal):6.1f} s  took {took:6.2f} s  "
      f"ratio {took / float(ideal):5.2f}  429s {o['retries']:>3}  gave up {o['gave_up']}")
PY
}

echo "workers: $WORKERS"
port=$(free_port)
"$BIN/gateway" --config examples/policies/qstash.json --listen "127.0.0.1:$port" --no-metrics >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$port"
# 100 at once, then 100 a second.
run "gateway qstash.json (100/s burst)" "http://127.0.0.1:$port/v2/messages/m1" 500 4 "authorization: Bearer pace-$RANDOM"

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  for mode in nodelay queued; do
    port=$(free_port); dir="$TMP/nginx-$mode"; mkdir -p "$dir"; echo ok > "$dir/ok"
    flag=""; [ "$mode" = nodelay ] && flag=" nodelay"
    cat > "$dir/nginx.conf" <<CONF
master_process off;
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $dir/b; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  limit_req_zone \$binary_remote_addr zone=one:1m rate=5r/s;
  limit_req_status 429;
  server { listen 127.0.0.1:$port; location / { limit_req zone=one burst=5$flag; root $dir; } }
}
CONF
    "$NGINX" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    wait_port "$port"
    # nodelay: 6 at once, then 5 a second; queued: one every 200 ms.
    if [ "$mode" = nodelay ]; then ideal=38.8; else ideal=39.8; fi
    run "nginx limit_req 5r/s burst=5 $mode" "http://127.0.0.1:$port/ok" 200 "$ideal"
  done
else
  echo "nginx not installed: skipped (apt-get install nginx)"
fi

if python3 -c "import flask_limiter" 2>/dev/null; then
  for strategy in fixed-window moving-window sliding-window-counter; do
    port=$(free_port)
    python3 tests/third_party/flask_limited.py "10 per 2 seconds" "$strategy" "$port" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$port"
    # 10 at once, then 10 every 2 s.
    run "Flask-Limiter 10 per 2 s, $strategy" "http://127.0.0.1:$port/ok" 100 18
  done
else
  echo "Flask-Limiter not installed: skipped (pip install flask flask-limiter)"
fi
