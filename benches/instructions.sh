#!/usr/bin/env bash
# Instructions the layer adds per request, under callgrind (valgrind): a
# figure that does not move with machine noise.
#
#   bash benches/instructions.sh        # N=20000 requests per mode
#
# benches/layer_cost.rs sends N requests (after 1 000 of warm-up) through a
# trivial service, bare, behind the layer (qarion.json's shape, nothing
# rejected: `layer`) and behind the layer refusing all but the first
# (`reject`); the difference of the totals divided by the requests sent is
# what the layer adds. Under valgrind the TSC clock (quanta) falls back to
# clock_gettime, which adds a few hundred instructions per request that a
# real run does not pay.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind; }
cargo bench --bench layer_cost --no-run >&2
BIN=$(ls -t target/release/deps/layer_cost-* | grep -v '\.d$' | head -1)
declare -A total
for mode in bare layer reject; do
  total[$mode]=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$mode" "$N" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
done
sent=$((N + 1000))
echo "instructions per request over bare ($sent requests per mode, callgrind):"
for mode in layer reject; do
  echo "  $mode: $(( (total[$mode] - total[bare]) / sent ))"
done
echo "  (bare itself: $(( total[bare] / sent )) per request, including the request's construction)"
