#!/usr/bin/env bash
# The whole test suite, as the README gives it: the Rust tests, then the web connector's
# type check, unit tests and real-browser tests (Debian's chromium and ffmpeg, the relay
# binary cargo test just built). Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --locked"
cargo test --locked

# The browser tests run the relay binary cargo test just built, so vitest never waits on
# a build of its own.
PLAYRELAY_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/playrelay"
test -x "$PLAYRELAY_BIN" || { echo "FAIL: cargo test left no relay binary at $PLAYRELAY_BIN" >&2; exit 1; }
export PLAYRELAY_BIN

echo "== connectors/web: npm ci, npm test (tsc --noEmit, vitest unit, vitest e2e in chromium)"
cd connectors/web
npm ci --no-audit --no-fund
npm test
