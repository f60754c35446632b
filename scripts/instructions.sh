#!/usr/bin/env bash
# Instructions per event of the hot path's stages, counted by callgrind: exact for a
# given binary, whatever else the machine is doing (timings on this shared 2-core box
# move by ±20%). Each stage runs twice, with 0 rounds and with ROUNDS, and the
# difference is divided by the events handled, so setup drops out.
#   scripts/instructions.sh                 # parse and every translator
#   scripts/instructions.sh parse translate:segment
#   ROUNDS=50 scripts/instructions.sh       # default 20
# Needs valgrind (Debian: apt-get install valgrind). See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
rounds=${ROUNDS:-20}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(parse translate:segment translate:ga4 translate:tealium translate:webhook)

bin=$(cargo bench --locked --bench instructions --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "instructions" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "could not build the instructions bench" >&2; exit 1; }

count() { # stage rounds -> total instructions
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$1" "$2" >/dev/null 2>&1 \
    || { echo "callgrind failed on $1" >&2; rm -f "$out"; exit 1; }
  awk '/^summary:/ {print $2}' "$out"
  rm -f "$out"
}

echo "build: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'); $rounds rounds"
printf '%-20s %12s\n' stage "instr/event"
for stage in "${stages[@]}"; do
  events=$("$bin" "$stage" 0)
  base=$(count "$stage" 0)
  loaded=$(count "$stage" "$rounds")
  python3 -c "print(f'{\"$stage\":20} {($loaded - $base) / ($rounds * $events):12,.0f}')"
done
