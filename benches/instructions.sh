#!/usr/bin/env bash
# Instructions the layer adds per request, under callgrind (valgrind): a
# figure that does not move with machine noise.
#
#   bash benches/instructions.sh        # N=20000 requests per mode
#
# benches/layer_cost.rs sends N requests (after 1 000 of warm-up) through a
# trivial service, bare, behind the layer (qarion.json's shape, nothing
# rejected: `layer`) and behind the layer refusing all but the first
# (`reject`); the difference of the per-request costs is
# what the layer adds.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
# Every feature compiled in (metrics and tracing with no recorder installed),
# as the figures of benches/README.md were measured; FEATURES= for the lean
# default build.
FEATURES=${FEATURES-full}
command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind; }
cargo bench --bench layer_cost ${FEATURES:+--features "$FEATURES"} --no-run >&2
BIN=$(ls -t target/release/deps/layer_cost-* | grep -v '\.d$' | head -1)
# Only the measured part of each run is counted (--toggle-collect: after
# building everything and 1 000 requests of warm-up, so neither the TSC
# clock's calibration, which varies by millions of instructions from run to
# run, nor first-use tables count), and each mode runs N and 2N requests:
# the difference of the two counts over N is the cost of one request.
declare -A slope
for mode in bare layer reject decide governor; do
  t1=$(valgrind --tool=callgrind --toggle-collect='layer_cost::measured*' --callgrind-out-file=/dev/null "$BIN" "$mode" "$N" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  t2=$(valgrind --tool=callgrind --toggle-collect='layer_cost::measured*' --callgrind-out-file=/dev/null "$BIN" "$mode" "$((2 * N))" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  slope[$mode]=$(( (t2 - t1) / N ))
done
echo "instructions per request (callgrind, slope between $N and $((2 * N)) requests):"
echo "  bare: ${slope[bare]} (building the request and answering it)"
for mode in layer reject; do
  echo "  $mode: ${slope[$mode]}, the layer adds $(( slope[$mode] - slope[bare] ))"
done
echo "instructions per decision (decide.rs hot_key, no layer):"
echo "  tierlimit (2 sliding limits): ${slope[decide]}; governor (1 GCRA quota): ${slope[governor]}"
