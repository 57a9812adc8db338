#!/usr/bin/env bash
# B1 regression guard (issue 19): runs the B1 bench at 2M events (3 rounds, best of each) and fails when meterflow -w 2
# falls under 1.2x the naive baseline measured in the same run. A ratio, not a rate, so it
# holds on a noisy or slower machine. Run it before every push that touches operators/ or the
# sinks; it is not part of .ci/run (it needs a quiet machine and a release build).
#
# usage: benchmarks/regress.sh [min ratio, default 1.2] [bench flags...]
#
# Each run appends one line to benchmarks/regress-history.tsv (commit, date, -w 2 events/s,
# ratio to the baseline, ratio to the core baseline, -w 2 / -w 1) and prints the previous line
# beside the new one; copy both into RESULTS.md when recording a figure.
set -euo pipefail
cd "$(dirname "$0")/.."
min="${1:-1.2}"
shift || true

cargo build --release --workspace --locked
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
./target/release/bench --events 2000000 --runs 3 "$@" | tee "$log"

# "meterflow -w 2: 758871 events/s, 1.45x the baseline, 1.00x the core baseline; scaling -w 2 / -w 1: 1.81x"
line="$(grep '^meterflow -w 2:' "$log")"
read -r rate ratio core scaling < <(sed -E 's/^meterflow -w 2: ([0-9]+) events\/s, ([0-9.]+)x the baseline, ([0-9.]+)x the core baseline; scaling -w 2 \/ -w 1: ([0-9.]+)x$/\1 \2 \3 \4/' <<<"$line")

history=benchmarks/regress-history.tsv
[ -f "$history" ] || printf 'commit\tdate\tw2_events_per_s\tvs_baseline\tvs_core_baseline\tw2_over_w1\n' >"$history"
previous="$(tail -n +2 "$history" | tail -1)"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- operators pipeline schemas || echo '+changes')"
printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$commit" "$(date -u +%Y-%m-%dT%H:%MZ)" "$rate" "$ratio" "$core" "$scaling" >>"$history"

echo
echo "previous: ${previous:-none}"
echo "this run: $commit -w 2 ${rate} events/s, ${ratio}x the baseline (${core}x the core baseline), -w 2 / -w 1 ${scaling}x"
if awk -v r="$ratio" -v m="$min" 'BEGIN { exit !(r < m) }'; then
  echo "REGRESSION: -w 2 is ${ratio}x the baseline, under the ${min}x floor" >&2
  exit 1
fi
echo "ok: ${ratio}x >= ${min}x"
