#!/usr/bin/env bash
# The whole test suite, as the README gives it: the Rust tests, then the web connector's
# type check and unit tests. Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --locked"
cargo test --locked

echo "== connectors/web: npm ci, npm test (tsc --noEmit, vitest)"
cd connectors/web
npm ci --no-audit --no-fund
npm test
