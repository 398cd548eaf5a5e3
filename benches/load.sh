#!/usr/bin/env bash
# Load test of the example gateway with wrk or oha, on loopback only, bounded
# in time: this crate next to tower_governor and to the bare server, in one run.
#
#   bash benches/load.sh                # wrk; DURATION=4s ROUNDS=3 CONNS=50 KEYS=1000
#   LOADGEN=oha bash benches/load.sh    # the same scenarios and table with oha
#
# About 2 minutes of load plus the release build of the gateway (about 90 s
# from cold); wrk is installed with apt-get when missing (as root), oha with
# `cargo install oha --locked` (about 4 minutes, once).
#
# wrk varies the x-api-key header per request with a Lua script. oha cannot
# vary headers, only URLs (--rand-regex-url), so with LOADGEN=oha every
# gateway runs with `--api-key-query api_key` (a request without x-api-key
# takes its key from `?api_key=`, for tierlimit and tower_governor alike),
# single-key scenarios send `x-api-key: load-test-key-0`, and the KEYS
# scenarios ask for `/api/items?api_key=load-test-key-[0-9]{D}`: KEYS is
# rounded up to a power of ten (D digits), and the keys are drawn at random
# rather than in turn. oha's "aborted due to deadline" (requests cut off when
# the duration ends) are not counted as failures.
#
# Scenarios, each measured ROUNDS times, interleaved, on one gateway binary
# built in release mode, all serving the same demo route (`/api/items`):
#   bare           the demo API without limiting (--no-limit): the baseline
#   open           qarion.json's policy shape (two sliding limits per request,
#                  three X-RateLimit-* headers) with capacities raised so
#                  that nothing is rejected; one API key
#   gov-open       tower_governor (--governor 4000000000: one GCRA quota per
#                  x-api-key, its two headers on), nothing rejected; one key
#   open-keys      `open` with KEYS distinct API keys (a wrk Lua script varies
#                  x-api-key per request)
#   gov-keys       `gov-open` with KEYS distinct API keys
#   rejecting      qarion.json as shipped, one API key: after 60 requests
#                  every request is answered 429 by the layer
#   gov-rejecting  tower_governor at 60 a minute, one key: nearly all 429
#   redis          the hot-key case: `open` with its counters in Redis
#                  (--redis, a redis-server of its own on a free port), one
#                  API key, so every request of every connection draws on
#                  one counter; leases on (the default). Only when
#                  redis-server is installed. Compared with `open`.
#   redis-nolease  `redis` with `store.redis.lease_ms: 0`: a round trip per
#                  request (what the hot key cost before leases)
#   redis-keys     `open-keys` on Redis: KEYS keys, none busy enough on its
#                  own to be leased. Compared with `open-keys`.
# It prints requests/s, p50/p99 latency, server CPU per request (utime+stime
# of the gateway process over the run / requests) and the ratios to `bare`
# measured in the same invocation (median round of each scenario, with the
# spread of the rounds). wrk and the gateway share this machine's cores:
# compare ratios from one run, never absolute figures across runs.
#
#   PIN=1 bash benches/load.sh      # Redis on a core of its own
#   BASE_BIN=/path/to/older/gateway bash benches/load.sh
#                                   # also `redis-base`: the same Redis
#                                   # scenario on another build of the
#                                   # gateway (e.g. the last release), in the
#                                   # same run, interleaved
#
# The Redis scenarios also print Redis script calls per admitted request
# (EVALSHA calls from INFO commandstats over the run / requests admitted).
#   ONLY="bare open gov-open" bash benches/load.sh   # a subset
#
# With PIN=1 (and at least 2 cores) redis-server runs alone on the last
# core and the gateway and wrk share the others, in every scenario.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-4s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
KEYS=${KEYS:-1000}
THREADS=${THREADS:-2}
ONLY=${ONLY:-bare open gov-open open-keys gov-keys rejecting gov-rejecting redis redis-nolease redis-keys}
PIN=${PIN:-}
ON_APP=()
ON_REDIS=()
if [ -n "$PIN" ] && [ "$(nproc)" -ge 2 ]; then
  last=$(( $(nproc) - 1 ))
  ON_APP=(taskset -c "0-$(( last - 1 ))")
  ON_REDIS=(taskset -c "$last")
  echo "PIN=1: redis-server on core $last, the gateway and wrk on cores 0-$(( last - 1 ))" >&2
fi

LOADGEN=${LOADGEN:-wrk}
GW_EXTRA=()
case "$LOADGEN" in
  wrk)
    if ! command -v wrk >/dev/null 2>&1; then
      echo "wrk not found: installing it (apt-get install wrk)" >&2
      apt-get update -qq >&2 && apt-get install -y -qq wrk >&2
    fi ;;
  oha)
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v oha >/dev/null 2>&1; then
      echo "oha not found: installing it (cargo install oha --locked)" >&2
      cargo install oha --locked >&2
    fi
    GW_EXTRA=(--api-key-query api_key) ;;
  *) echo "LOADGEN must be wrk or oha, not $LOADGEN" >&2; exit 2 ;;
esac
# oha: the digits of the generated keys (KEYS rounded up to a power of ten).
DIGITS=$(python3 -c "import sys; k=max(int(sys.argv[1]),2); print(len(str(k-1)))" "$KEYS")
cargo build --release --features full --example gateway >&2
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
# The same without leases on Redis (--redis gives the URL; the rest of the
# section stays).
cfg["store"] = {"redis": {"url": "redis://unused", "lease_ms": 0}}
json.dump(cfg, open(sys.argv[1].replace(".json", "-nolease.json"), "w"))
PY

# wrk: x-api-key from KEYS keys (one key when KEYS=1); counts statuses.
cat >"$work/keys.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  keys = tonumber(os.getenv("WRK_KEYS") or "1")
  n, ok, rej, other = 0, 0, 0, 0
end
function request()
  n = n + 1
  return wrk.format(nil, nil, { ["x-api-key"] = "load-test-key-" .. (n % keys) })
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 elseif status == 429 then rej = rej + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local o, r, x = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); r = r + t:get("rej"); x = x + t:get("other")
  end
  x = x + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT\t%.1f\t%.0f\t%.0f\t%d\t%d\t%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99), o, r, x))
end
LUA

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cpu_ticks() { # utime + stime of a process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # name keys config extra-args... (RUN_BIN: another gateway binary)
  local name=$1 keys=$2 config=$3; shift 3
  local port; port=$(free_port)
  local bin=${RUN_BIN:-$BIN}
  "${ON_APP[@]}" "$bin" --config "$config" --listen "127.0.0.1:$port" --no-metrics "${GW_EXTRA[@]}" "$@" >"$work/$name.log" 2>&1 &
  GW=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.05
  done
  if ! kill -0 "$GW" 2>/dev/null; then
    echo "the gateway did not start:" >&2; cat "$work/$name.log" >&2; exit 1
  fi
  local before; before=$(cpu_ticks "$GW")
  local calls_before; calls_before=$(script_calls)
  if [ "$LOADGEN" = wrk ]; then
    WRK_KEYS=$keys "${ON_APP[@]}" wrk -t "$THREADS" -c "$CONNS" -d "$DURATION" -s "$work/keys.lua" \
      "http://127.0.0.1:$port/api/items" >"$work/$name.out"
  else
    local target=(-H "x-api-key: load-test-key-0" "http://127.0.0.1:$port/api/items")
    if [ "$keys" -gt 1 ]; then
      target=(--rand-regex-url "http://127.0.0.1:$port/api/items\\?api_key=load-test-key-[0-9]{$DIGITS}")
    fi
    "${ON_APP[@]}" oha -z "$DURATION" -c "$CONNS" --no-tui --output-format json "${target[@]}" \
      >"$work/$name.json"
    python3 - "$work/$name.json" >"$work/$name.out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = {int(k): v for k, v in d["statusCodeDistribution"].items()}
ok, rej = codes.get(200, 0), codes.get(429, 0)
other = sum(v for k, v in codes.items() if k not in (200, 429))
other += sum(v for k, v in d["errorDistribution"].items() if "deadline" not in k)
p = d["latencyPercentiles"]
print(f"RESULT\t{d['summary']['requestsPerSec']:.1f}\t{(p['p50'] or 0) * 1e6:.0f}\t{(p['p99'] or 0) * 1e6:.0f}\t{ok}\t{rej}\t{other}")
PY
  fi
  local after; after=$(cpu_ticks "$GW")
  local calls_after; calls_after=$(script_calls)
  kill -TERM "$GW"; wait "$GW" 2>/dev/null || true; GW=
  echo -e "$name\t$((calls_after - calls_before))" >>"$work/calls.tsv"
  python3 - "$work/$name.out" "$name" "$((after - before))" "$(getconf CLK_TCK)" >>"$work/results.tsv" <<'PY'
import sys
line = next(l for l in open(sys.argv[1]) if l.startswith("RESULT"))
_, rps, p50, p99, ok, rej, other = line.rstrip("\n").split("\t")
name, ticks, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
total = int(ok) + int(rej) + int(other)
cpu_us = ticks / hz / max(total, 1) * 1e6
print(f"{name}\t{rps}\t{p50}\t{p99}\t{cpu_us:.2f}\t{ok}\t{rej}\t{other}")
PY
}

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

# Script calls (EVALSHA) the load's redis-server has run so far: 0 without
# one. Per admitted request, what a hot key costs Redis.
script_calls() {
  [ -n "${REDIS_PID:-}" ] || { echo 0; return; }
  redis-cli -p "$rport" INFO commandstats 2>/dev/null \
    | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | head -1 | grep . || echo 0
}

REDIS_PID=
if { wanted redis || wanted redis-nolease || wanted redis-keys; } && command -v redis-server >/dev/null 2>&1; then
  rport=$(free_port)
  "${ON_REDIS[@]}" redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  REDIS_PID=$!
  trap '[ -n "${GW:-}" ] && kill "$GW" 2>/dev/null; [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
  sleep 0.3
fi

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  wanted bare && run bare 1 examples/policies/qarion.json --no-limit
  wanted open && run open 1 "$work/open-policy.json"
  wanted gov-open && run gov-open 1 examples/policies/qarion.json --governor 4000000000
  wanted open-keys && run open-keys "$KEYS" "$work/open-policy.json"
  wanted gov-keys && run gov-keys "$KEYS" examples/policies/qarion.json --governor 4000000000
  wanted rejecting && run rejecting 1 examples/policies/qarion.json
  wanted gov-rejecting && run gov-rejecting 1 examples/policies/qarion.json --governor 60
  if [ -n "$REDIS_PID" ]; then
    wanted redis && run redis 1 "$work/open-policy.json" --redis "redis://127.0.0.1:$rport"
    wanted redis-nolease && run redis-nolease 1 "$work/open-policy-nolease.json" --redis "redis://127.0.0.1:$rport"
    wanted redis-keys && run redis-keys "$KEYS" "$work/open-policy.json" --redis "redis://127.0.0.1:$rport"
    if [ -n "${BASE_BIN:-}" ]; then
      RUN_BIN=$BASE_BIN run redis-base 1 "$work/open-policy.json" --redis "redis://127.0.0.1:$rport"
    fi
  fi
done

KEYS_SHOWN=$KEYS
[ "$LOADGEN" = oha ] && KEYS_SHOWN=$(python3 -c "print(10**$DIGITS)")
python3 - "$work/results.tsv" "$DURATION" "$CONNS" "$THREADS" "$KEYS_SHOWN" "${PIN:+ (PIN=1: redis-server on a core of its own)}" "$LOADGEN" "$work/calls.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
calls = {}
for l in open(sys.argv[8]):
    n, c = l.rstrip("\n").split("\t")
    calls.setdefault(n, []).append(int(c))
runs = {}
for name, rps, p50, p99, cpu, ok, rej, other in rows:
    runs.setdefault(name, []).append(dict(rps=float(rps), p50=float(p50), p99=float(p99), cpu=float(cpu), ok=int(ok), rej=int(rej), other=int(other)))
med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
dur, conns, threads, keys, pin, loadgen = sys.argv[2:8]
gen = f"wrk -t{threads} -c{conns} -d{dur}" if loadgen == "wrk" else f"oha -c{conns} -z{dur}"
print(f"{gen} (keys scenarios: {keys} keys){pin}: median of {len(next(iter(runs.values())))} interleaved rounds per scenario")
print(f"{'scenario':<14} {'rps':>8} {'rps min..max':>15} {'p50 us':>7} {'p99 us':>7} {'cpu us/req':>10} {'429 share':>9}   rps/bare  cpu/bare")
base = med.get("bare")
order = ["bare", "open", "gov-open", "open-keys", "gov-keys", "rejecting", "gov-rejecting", "redis", "redis-nolease", "redis-keys", "redis-base"]
for name in [n for n in order if n in med]:
    r, rs = med[name], runs[name]
    share = sum(x["rej"] for x in rs) / max(1, sum(x["ok"] + x["rej"] + x["other"] for x in rs))
    lo, hi = min(x["rps"] for x in rs), max(x["rps"] for x in rs)
    rel = f"{r['rps']/base['rps']:>8.3f}  {r['cpu']/base['cpu']:>8.3f}" if base else ""
    print(f"{name:<14} {r['rps']:>8.0f} {lo:>7.0f}..{hi:<7.0f} {r['p50']:>7.0f} {r['p99']:>7.0f} {r['cpu']:>10.2f} {share:>9.4f}   {rel}")
def cmp(a, b, what):
    if a in med and b in med:
        print(f"{a} vs {b}: cpu/req {med[a]['cpu']/med[b]['cpu']:.3f}, rps {med[a]['rps']/med[b]['rps']:.3f}  ({what})")
cmp("open", "gov-open", "admitted path, one key")
cmp("open-keys", "gov-keys", "admitted path, many keys")
cmp("rejecting", "gov-rejecting", "rejection path")
cmp("redis", "open", "hot key: Redis store vs memory store; goal at least 0.8")
cmp("redis-nolease", "open", "hot key without leases vs memory store")
cmp("redis-keys", "open-keys", "many keys: Redis store vs memory store")
cmp("redis", "redis-base", "this build vs BASE_BIN, on Redis")
for n in ("redis", "redis-nolease", "redis-keys", "redis-base"):
    if n in runs and n in calls:
        per = [c / max(1, x["ok"]) for c, x in zip(calls[n], runs[n])]
        goal = "; goal at most 0.05" if n == "redis" else ""
        print(f"{n}: Redis script calls per admitted request {statistics.median(per):.3f} "
              f"({min(per):.3f}..{max(per):.3f}; EVALSHA from INFO commandstats{goal})")
if any(x["rej"] for n in ("open", "gov-open", "open-keys", "gov-keys", "redis", "redis-nolease", "redis-keys", "redis-base") if n in runs for x in runs[n]):
    print("WARNING: an open scenario rejected requests")
if any(x["other"] for rs in runs.values() for x in rs):
    print("WARNING: some requests failed or got other statuses")
PY
