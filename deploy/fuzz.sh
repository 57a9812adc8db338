#!/usr/bin/env bash
# Fuzzes meterflow's input parsers with libFuzzer (cargo-fuzz on the nightly toolchain):
#   records  any bytes as a file chunk and as a Kafka message (one object, NDJSON, a JSON array,
#            CloudEvents structured or batch), every record validated against a catalog
#   catalog  any text as a catalog file
#   config   any text as meterflow.toml
# Each runs for SECONDS (default 120). Not part of .ci/run (it is a time budget, not a test).
# A crash is saved under tests/fuzz/artifacts/<target>/: make it a regression test (a record:
# a file in tests/corpus/ named after the reason it must be rejected with).
#
#   deploy/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
seconds="${1:-120}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(records catalog config)
root="$(cd "$(dirname "$0")/.." && pwd)"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cd "$root/tests/fuzz"
for t in "${targets[@]}"; do
  corpus="$root/target/fuzz-corpus/$t"
  mkdir -p "$corpus"
  seeds=()
  # The records target starts from the committed bad-input corpus.
  [ "$t" = records ] && seeds=("$root/tests/corpus")
  # The catalog target starts from the demo's catalog, the config target from the example configs.
  if [ "$t" = catalog ]; then
    mkdir -p "$corpus-seeds"
    (cd "$root" && cargo run --quiet --release -p meterflow -- demo --dir "$corpus-seeds/demo" >/dev/null)
    cp "$corpus-seeds/demo/catalog/catalog.toml" "$corpus-seeds/demo-catalog.toml"
    seeds=("$corpus-seeds")
  fi
  if [ "$t" = config ]; then
    mkdir -p "$corpus-seeds"
    cp "$root/meterflow.example.toml" "$root"/deploy/*.toml "$corpus-seeds/"
    seeds=("$corpus-seeds")
  fi
  echo "fuzzing $t for ${seconds}s" >&2
  cargo +nightly fuzz run "$t" "$corpus" "${seeds[@]}" -- -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536
done
echo "no crash in ${targets[*]} (${seconds}s each)" >&2
