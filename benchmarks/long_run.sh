#!/usr/bin/env bash
# Issue 19's memory target, measured: RSS over a long file run (default 100M records) stays flat
# once the dedup horizon and the anomaly detector's reach have filled.
#
# The records are generated while meterflow reads them (`meterflow gen` writes into a FIFO that
# `meterflow run --input -` reads), so nothing of the input is stored. The two largest tables,
# usage_events and usage_buckets, are truncated every few seconds while the run writes them
# (their files become sparse): 100M records would otherwise need ~14 GB and ~4 GB of disk. Every
# table is still formatted and written; only the disk keeps less of it. RSS of the meterflow
# process is sampled every second into rss.csv (seconds, RSS MiB, records read so far).
#
# usage: benchmarks/long_run.sh [records, default 100000000] [workers, default 2] [dir]
#                               [days of event time, default 180]
#
# The dedup horizon (7 days) and the detector's reach (~5 weeks) fill over the first ~40 days of
# event time: with 180 days, the last three quarters of the run show the steady state.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-100000000}"
workers="${2:-2}"
dir="${3:-target/long-run}"
days="${4:-180}"
# Event time ends a day before today: later events would be rejected as in the future.
first_day="$(date -u -d "-$((days + 1)) days" +%Y-%m-%dT00:00:00Z)"
meterflow=./target/release/meterflow
cargo build --release -p meterflow --locked

rm -rf "$dir"
mkdir -p "$dir/gen"
# The catalog first (it depends on the customers, not on the number of records).
"$meterflow" gen --out "$dir/catalog-only" --events 1 --customers 1000 --days "$days" \
  --start "$first_day" >/dev/null
mv "$dir/catalog-only/catalog" "$dir/gen/catalog"
rm -rf "$dir/catalog-only"
mkfifo "$dir/gen/events.jsonl"
# gen rewrites the catalog (the same one) and then streams its records into the FIFO.
"$meterflow" gen --out "$dir/gen" --events "$records" --customers 1000 --days "$days" \
  --start "$first_day" >"$dir/gen.log" 2>&1 &
gen=$!
METERFLOW_LOG=warn "$meterflow" run --input - --catalog "$dir/gen/catalog" --out "$dir/out" \
  -w "$workers" --quiet <"$dir/gen/events.jsonl" >"$dir/run.log" 2>&1 &
run=$!

echo "seconds,rss_mib" >"$dir/rss.csv"
start=$(date +%s)
while kill -0 "$run" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print int($2/1024)}' "/proc/$run/status" 2>/dev/null || true)
  [ -n "$rss" ] && echo "$(( $(date +%s) - start )),$rss" >>"$dir/rss.csv"
  for t in usage_events usage_buckets; do
    for f in "$dir/out/$t"/part-*.csv; do [ -f "$f" ] && truncate -s 0 "$f"; done
  done
  sleep 1
done
wait "$run"
wait "$gen"
cat "$dir/gen.log"
python3 - "$dir" <<'PY'
import csv, json, sys
d = sys.argv[1]
rows = [(int(s), int(r)) for s, r in (l for l in csv.reader(open(f"{d}/rss.csv")) if l[0] != "seconds")]
c = json.load(open(f"{d}/out/counts.json"))
total = rows[-1][0] or 1
half = [r for s, r in rows if total / 2 <= s <= total * 0.95]
print(f"rejected {c['rejected']}, duplicates {c['duplicates']}, late {c['late']}")
print(f"{c['received']} records in {c['elapsed_seconds']:.0f} s ({c['received'] / c['elapsed_seconds']:.0f}/s), "
      f"balanced: {c['balanced']}, dedup keys at the end: {c['dedup_keys']}")
print("RSS MiB at 10%, 25%, 50%, 75%, 100% of the run:",
      [next(r for s, r in rows if s >= total * q) for q in (0.1, 0.25, 0.5, 0.75, 1.0)])
lo, hi = min(half), max(half)
print(f"from 50% to 95% of the run: {lo}-{hi} MiB, spread {100 * (hi - lo) / hi:.1f}% of its peak; peak over the run {max(r for _, r in rows)} MiB")
# The steady state: from a quarter of the run (the horizon and the detector's reach are full by
# then with the default 180 days) to 95% (the end of the run drops its state).
late = [(s, r) for s, r in rows if total / 4 <= s <= total * 0.95]
n = len(late)
mean_s, mean_r = sum(s for s, _ in late) / n, sum(r for _, r in late) / n
slope = sum((s - mean_s) * (r - mean_r) for s, r in late) / max(1e-9, sum((s - mean_s) ** 2 for s, _ in late))
worst = max(abs(r - mean_r) for _, r in late) / mean_r
print(f"from 25% to 95% of the run: mean {mean_r:.0f} MiB, every sample within {100 * worst:.1f}% of it; "
      f"trend {slope:+.2f} MiB/s ({slope * (late[-1][0] - late[0][0]):+.0f} MiB over the window)")
PY
