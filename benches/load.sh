#!/usr/bin/env bash
# Load test of the example gateway with oha, on loopback only, bounded in time.
#
#   bash benches/load.sh            # DURATION=4s ROUNDS=5 CONNS=32 by default
#
# About 70 s of load plus the release build of the gateway (about 90 s from
# cold); installing oha the first time takes a few minutes more.
#
# Three scenarios, each measured ROUNDS times, interleaved, on one gateway
# binary built in release mode:
#   bare      the demo API without limiting (--no-limit): the baseline
#   open      qarion.json's policy shape (two sliding limits per request) with
#             capacities raised so that nothing is rejected
#   rejecting qarion.json as shipped, one API key: after 60 requests every
#             request is answered 429 by the layer
#   redis     the open scenario with its counters in Redis (--redis, a
#             redis-server of its own on a free port); only when redis-server
#             is installed. Compared with `open` as well as with `bare`.
# It prints requests/s, p50/p99 latency, server CPU per request (utime+stime
# of the gateway process over the run / requests) and the ratios to `bare`
# measured in the same invocation (median round of each scenario, with the
# spread of the rounds, since one machine runs both load and server).
# oha and the gateway share this machine's cores: expect a few % of noise.
#
#   PIN=1 bash benches/load.sh      # Redis on a core of its own
#
# With PIN=1 (and at least 2 cores) redis-server runs alone on the last
# core and the gateway and oha share the others, in every scenario: a model
# of Redis on a host of its own, where the Redis server's work does not
# compete with the gateway's. Without it, all three share every core.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-4s}
PIN=${PIN:-}
ON_APP=()
ON_REDIS=()
if [ -n "$PIN" ] && [ "$(nproc)" -ge 2 ]; then
  last=$(( $(nproc) - 1 ))
  ON_APP=(taskset -c "0-$(( last - 1 ))")
  ON_REDIS=(taskset -c "$last")
  echo "PIN=1: redis-server on core $last, the gateway and oha on cores 0-$(( last - 1 ))" >&2
fi
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-32}

if ! command -v oha >/dev/null 2>&1; then
  echo "oha not found: installing it (cargo install oha --locked)" >&2
  cargo install oha --locked
fi
cargo build --release --example gateway >&2
BIN=target/release/examples/gateway

work=$(mktemp -d)
trap '[ -n "${GW:-}" ] && kill "$GW" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# qarion.json with every capacity raised to 4e9: same limits, nothing rejected.
python3 - "$work/open-policy.json" <<'PY'
import json, sys
cfg = json.load(open("examples/policies/qarion.json"))
for tier in cfg["tiers"].values():
    for lim in tier.get("limits", []):
        lim["capacity"] = 4_000_000_000
json.dump(cfg, open(sys.argv[1], "w"))
PY

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cpu_ticks() { # utime + stime of a process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # name config extra-args...
  local name=$1 config=$2; shift 2
  local port; port=$(free_port)
  "${ON_APP[@]}" "$BIN" --config "$config" --listen "127.0.0.1:$port" "$@" >"$work/$name.log" 2>&1 &
  GW=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.05
  done
  if ! kill -0 "$GW" 2>/dev/null; then
    echo "the gateway did not start:" >&2; cat "$work/$name.log" >&2; exit 1
  fi
  local before; before=$(cpu_ticks "$GW")
  "${ON_APP[@]}" oha -z "$DURATION" -c "$CONNS" --no-tui --output-format json \
    -H "x-api-key: load-test-key" "http://127.0.0.1:$port/api/items" >"$work/$name.json"
  local after; after=$(cpu_ticks "$GW")
  kill -TERM "$GW"; wait "$GW" 2>/dev/null || true; GW=
  python3 - "$work/$name.json" "$name" "$((after - before))" "$(getconf CLK_TCK)" >>"$work/results.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
name, ticks, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
codes = d["statusCodeDistribution"]
total = sum(codes.values())
rps = d["summary"]["requestsPerSec"]
p50 = d["latencyPercentiles"]["p50"] * 1e6
p99 = d["latencyPercentiles"]["p99"] * 1e6
cpu_us = ticks / hz / max(total, 1) * 1e6
print(f"{name}\t{rps:.0f}\t{p50:.0f}\t{p99:.0f}\t{cpu_us:.2f}\t{codes.get('200', 0)}\t{codes.get('429', 0)}\t{total - codes.get('200', 0) - codes.get('429', 0)}")
PY
}

REDIS_PID=
if command -v redis-server >/dev/null 2>&1; then
  rport=$(free_port)
  "${ON_REDIS[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  REDIS_PID=$!
  trap '[ -n "${GW:-}" ] && kill "$GW" 2>/dev/null; [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
  sleep 0.3
fi

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  run bare examples/policies/qarion.json --no-limit
  run open "$work/open-policy.json"
  run rejecting examples/policies/qarion.json
  if [ -n "$REDIS_PID" ]; then
    run redis "$work/open-policy.json" --redis "redis://127.0.0.1:$rport"
  fi
done

python3 - "$work/results.tsv" "$DURATION" "$CONNS" "${PIN:+ (PIN=1: redis-server on a core of its own)}" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
runs = {}
for name, rps, p50, p99, cpu, ok, rej, other in rows:
    runs.setdefault(name, []).append(dict(rps=float(rps), p50=float(p50), p99=float(p99), cpu=float(cpu), ok=int(ok), rej=int(rej), other=int(other)))
med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
print(f"oha -z {sys.argv[2]} -c {sys.argv[3]}{sys.argv[4]}: median of {len(runs['bare'])} interleaved rounds per scenario")
print(f"{'scenario':<10} {'rps':>8} {'rps min..max':>15} {'p50 us':>7} {'p99 us':>7} {'cpu us/req':>10} {'429 share':>9}   rps/bare  cpu/bare")
base = med["bare"]
for name in [n for n in ["bare", "open", "rejecting", "redis"] if n in med]:
    r, rs = med[name], runs[name]
    share = sum(x["rej"] for x in rs) / max(1, sum(x["ok"] + x["rej"] + x["other"] for x in rs))
    lo, hi = min(x["rps"] for x in rs), max(x["rps"] for x in rs)
    print(f"{name:<10} {r['rps']:>8.0f} {lo:>7.0f}..{hi:<7.0f} {r['p50']:>7.0f} {r['p99']:>7.0f} {r['cpu']:>10.2f} {share:>9.4f}   {r['rps']/base['rps']:>8.3f}  {r['cpu']/base['cpu']:>8.3f}")
if "redis" in med:
    r, o = med["redis"], med["open"]
    print(f"redis vs open (memory store): rps {r['rps']/o['rps']:.3f}, p99 {r['p99']:.0f} us vs {o['p99']:.0f} us, cpu {r['cpu']/o['cpu']:.3f}")
else:
    print("redis scenario skipped: redis-server not installed")
if any(x["rej"] for n in ("open", "redis") if n in runs for x in runs[n]):
    print("WARNING: the open scenario rejected requests")
if any(x["other"] for rs in runs.values() for x in rs):
    print("WARNING: some requests failed or got other statuses")
PY
