#!/usr/bin/env sh
# One command for the performance figures (docs/performance.md):
#   scripts/bench.sh                      all scenarios, 10 s of load each
#   scripts/bench.sh --quick              3 s each, to check the harness works
#   scripts/bench.sh --json out.json      also write the figures as JSON
#   scripts/bench.sh --scenarios 1,3 --duration 5
#   scripts/bench.sh --micro              criterion micro-benchmarks as well
#   scripts/bench.sh --scenarios rt --vendor-latency-ms 100 --vendor-jitter-ms 40 --defaults \
#       --json docs/bench-rt.json         vendors 60-140 ms away, the shipped defaults
#                                         (only endpoints set); then
#   python3 scripts/plot_concurrency.py docs/bench-rt.json docs/adaptive-concurrency.png
# Builds the release relay (`cargo bench` builds it with the bench target), starts it
# as its own process with a generated routes.toml, local vendor stand-ins and our own
# load generator on 127.0.0.1. Every run is bounded in time.
set -eu
cd "$(dirname "$0")/.."
micro=0
args=""
for a in "$@"; do
  if [ "$a" = "--micro" ]; then micro=1; else args="$args $a"; fi
done
echo "load before the run: $(uptime)" >&2
# shellcheck disable=SC2086
timeout 1800 cargo bench --bench load -- $args
if [ "$micro" = 1 ]; then
  timeout 900 cargo bench --bench micro -- --warm-up-time 1 --measurement-time 3
fi
