#!/usr/bin/env bash
# The whole test suite, as the README gives it: the Rust tests, then the web connector's
# type check, unit tests and real-browser tests (Debian's chromium and ffmpeg, the relay
# binary cargo test just built). Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --locked"
cargo test --locked

echo "== connectors/web: npm ci, npm test (tsc --noEmit, vitest unit, vitest e2e in chromium)"
cd connectors/web
npm ci --no-audit --no-fund
npm test
