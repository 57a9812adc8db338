#!/usr/bin/env bash
# Runs meterflow's whole test suite on a fresh machine: unit tests, deterministic dataflow tests,
# property tests against a batch oracle, end-to-end tests of the `meterflow` binary, and
# integration tests against real servers on loopback (ClickHouse, the tansu Kafka broker).
# Installs what it needs first, skipping what is already there (see install-test-servers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

./deploy/install-test-servers.sh

# Build once; the end-to-end tests run the binary built here.
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast
