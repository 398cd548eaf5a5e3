#!/usr/bin/env bash
# A flood of fresh API keys against the example gateway, on loopback only,
# bounded in time: what the key cap does for the callers caught in it.
#
#   bash benches/flood.sh                 # qarion.json, default key cap
#   MAX_KEYS=1000 bash benches/flood.sh   # a small cap
#
# wrk sends a fresh random x-api-key with every request (about 60 000 to
# 100 000 a second on a 2-core machine) for DURATION (default 45s), while
# this script, every 5 s, sends the first request of PROBES (default 200)
# new keys, and a "heavy" key asks twice a second all along (qarion's
# standard plan: 60 a minute). It prints, per 5 s, how many new keys were
# refused and the gateway's RSS, then how many of its requests the heavy
# key got through (at most 60 in a minute means its limit held) and wrk's
# totals. wrk and the gateway share the machine: the figures are for
# comparing trees on one machine, not absolute.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-45}
PROBES=${PROBES:-200}
MAX_KEYS=${MAX_KEYS:-}

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found: installing it (apt-get install wrk)" >&2
  apt-get update -qq >&2 && apt-get install -y -qq wrk >&2
fi
cargo build --release --features full --example gateway >&2
work=$(mktemp -d)
gw=""
wrkpid=""
cleanup() {
  [ -n "$wrkpid" ] && kill "$wrkpid" 2>/dev/null || true
  [ -n "$gw" ] && kill "$gw" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

config=examples/policies/qarion.json
if [ -n "$MAX_KEYS" ]; then
  python3 - "$work/policy.json" "$MAX_KEYS" <<'PY'
import json, sys
cfg = json.load(open("examples/policies/qarion.json"))
cfg["store"] = {"max_keys": int(sys.argv[2])}
json.dump(cfg, open(sys.argv[1], "w"))
PY
  config=$work/policy.json
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/examples/gateway --config "$config" --listen "127.0.0.1:$port" >"$work/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null "localhost:$port/health" && break
  sleep 0.1
done

cat >"$work/fresh.lua" <<'LUA'
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local n = 0
function setup(thread) n = n + 1; thread:set("id", n) end
function request()
  return wrk.format(nil, "/api/items", { ["x-api-key"] = string.format(
    "flood-%d-%d-%d", id or 0, math.random(1, 2^30), math.random(1, 2^30)) })
end
LUA
wrk -t2 -c64 -d"${DURATION}s" -s "$work/fresh.lua" "http://127.0.0.1:$port/" >"$work/wrk.txt" 2>&1 &
wrkpid=$!

# The heavy key, twice a second.
(
  ok=0
  for _ in $(seq 1 $((DURATION * 2 - 4))); do
    c=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: heavy-key' "localhost:$port/api/items")
    [ "$c" = 200 ] && ok=$((ok + 1))
    sleep 0.5
  done
  echo "heavy key: $ok of $((DURATION * 2 - 4)) admitted (60 a minute allowed)" >"$work/heavy.txt"
) &
heavy=$!

for round in $(seq 1 $((DURATION / 5 - 1))); do
  sleep 5
  refused=0
  for i in $(seq 1 "$PROBES"); do
    c=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: probe-$round-$i-$RANDOM$RANDOM" "localhost:$port/api/items")
    [ "$c" = 429 ] && refused=$((refused + 1))
  done
  echo "t=$((round * 5))s new keys refused: $refused of $PROBES, gateway RSS $(ps -o rss= -p "$gw" | tr -d ' ') KiB"
done
wait "$heavy"
wait "$wrkpid" || true
wrkpid=""
cat "$work/heavy.txt"
grep -E "requests in|Non-2xx|Requests/sec" "$work/wrk.txt" || true
