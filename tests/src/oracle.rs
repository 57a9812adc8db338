//! Comparing what a run left in ClickHouse with the embedded run of the same input (the oracle):
//! record counts, rejections by reason, the pricing input and the money on every invoice line.

use std::collections::BTreeMap;
use std::path::Path;

use meterflow::reports::tables::current_rows;
use meterflow::reports::tables::read_table;
use meterflow_schemas::money::{Amount, Quantity};

use crate::servers::ClickHouseServer;

/// Money per invoice line identity: (amount_exact, quantity, events).
pub type Money = BTreeMap<Vec<String>, (Amount, Quantity, i64)>;

const IDENTITY: [&str; 7] = [
    "customer_id",
    "contract_id",
    "sku",
    "region",
    "service_period",
    "invoice_period",
    "line_type",
];

pub fn from_clickhouse(ch: &ClickHouseServer) -> Money {
    table_from_clickhouse(ch, "invoice_lines")
}

/// Money per line of `invoice_lines` or `shadow_invoice_lines` in ClickHouse.
pub fn table_from_clickhouse(ch: &ClickHouseServer, table: &str) -> Money {
    let cols = IDENTITY.join(", ");
    let tsv = ch
        .query(&format!("SELECT {cols}, toString(sum(amount_exact * sign)), toString(sum(quantity * sign)), sum(events * sign) FROM meterflow.{table} GROUP BY {cols} HAVING sum(sign) != 0 FORMAT TabSeparated"))
        .unwrap();
    tsv.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[..7].iter().map(|s| s.to_string()).collect(),
                (
                    Amount::parse(f[7]).unwrap(),
                    Quantity::parse(f[8]).unwrap(),
                    f[9].parse().unwrap(),
                ),
            )
        })
        .collect()
}

pub fn from_csv(out: &Path) -> Money {
    table_from_csv(out, "invoice_lines")
}

/// Money per line of an embedded run's `invoice_lines` or `shadow_invoice_lines`.
pub fn table_from_csv(out: &Path, table: &str) -> Money {
    current_rows(&read_table(out, table).unwrap())
        .into_iter()
        .map(|r| {
            (
                IDENTITY.iter().map(|k| r[*k].clone()).collect(),
                (
                    Amount::parse(&r["amount_exact"]).unwrap(),
                    Quantity::parse(&r["quantity"]).unwrap(),
                    r["events"].parse().unwrap(),
                ),
            )
        })
        .collect()
}

/// Fails with the lines that differ (not the whole table).
pub fn assert_same(got: &Money, want: &Money, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        if got.get(k) != Some(v) {
            diffs.push(format!("{k:?}: got {:?}, want {v:?}", got.get(k)));
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            diffs.push(format!("{k:?}: got {v:?}, want nothing"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} invoice lines differ:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub fn count(ch: &ClickHouseServer, sql: &str) -> u64 {
    ch.query(sql).unwrap().trim().parse().unwrap()
}

/// Asserts that no event id was accepted twice.
pub fn assert_each_event_accepted_once(ch: &ClickHouseServer, what: &str) {
    assert_eq!(
        count(ch, "SELECT uniqExact(event_id) FROM meterflow.usage_events"),
        count(ch, "SELECT count() FROM meterflow.usage_events"),
        "{what}: no event accepted twice"
    );
}

/// Events billed by usage and adjustment lines.
pub fn billed_events(ch: &ClickHouseServer) -> u64 {
    count(ch, "SELECT sum(events * sign) FROM meterflow.invoice_lines WHERE line_type IN ('usage', 'adjustment')")
}

/// Fixes of the records `gen` sent in the wrong unit: their raw payloads with the unit
/// corrected, under their original event ids.
pub fn unit_mismatch_fixes(ch: &ClickHouseServer) -> Vec<String> {
    ch.query("SELECT raw_payload FROM meterflow.rejections WHERE reason = 'unit_mismatch' FORMAT JSONEachRow")
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["raw_payload"].as_str().unwrap().replace(r#""unit":"GB""#, r#""unit":"requests""#)
        })
        .collect()
}

/// `meterflow catalog log` of the change log in ClickHouse.
pub fn catalog_log(ch: &ClickHouseServer) -> String {
    let out = crate::meterflow_ok(&["catalog", "log", "--clickhouse-url", &ch.url()]);
    String::from_utf8(out.stdout).unwrap()
}

pub fn reasons(ch: &ClickHouseServer) -> BTreeMap<String, u64> {
    ch.query("SELECT reason, count() FROM meterflow.rejections GROUP BY reason FORMAT TabSeparated")
        .unwrap()
        .lines()
        .map(|l| {
            let (r, n) = l.split_once('\t').unwrap();
            (r.to_string(), n.parse().unwrap())
        })
        .collect()
}

pub fn counts_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("counts.json")).unwrap()).unwrap()
}

/// Asserts that ClickHouse holds exactly what the embedded run wrote to `oracle` (its CSV output
/// directory): the same records accepted, rejected (by reason) and marked duplicate, each event
/// accepted once, the pricing input equal to the accepted usage, and the same money per line.
/// Returns the oracle's counts, so a test can check its stream had what it means to test.
pub fn assert_clickhouse_matches(
    ch: &ClickHouseServer,
    oracle: &Path,
    what: &str,
) -> serde_json::Value {
    let want = signals_from_csv(oracle);
    for burn in ["budget_burn", "commitment_burn"] {
        assert!(
            want.iter().any(|r| r[4] == burn),
            "{what}: the stream has {burn} signals to compare"
        );
    }
    assert!(
        !buckets_from_csv(oracle).is_empty(),
        "{what}: the run has usage buckets"
    );
    assert_clickhouse_equals(ch, oracle, what)
}

/// [`assert_clickhouse_matches`] without insisting that the stream exercises entitlement
/// signals and buckets (for streams whose shape is the point, e.g. the soak's).
pub fn assert_clickhouse_equals(
    ch: &ClickHouseServer,
    oracle: &Path,
    what: &str,
) -> serde_json::Value {
    let (money, counts) = (from_csv(oracle), counts_json(oracle));
    let accepted = count(ch, "SELECT count() FROM meterflow.usage_events");
    let rejected = count(ch, "SELECT count() FROM meterflow.rejections");
    let duplicates = count(ch, "SELECT count() FROM meterflow.duplicates");
    assert_eq!(
        accepted,
        counts["accepted"].as_u64().unwrap(),
        "{what}: accepted"
    );
    assert_eq!(
        rejected,
        counts["rejected"].as_u64().unwrap(),
        "{what}: rejected"
    );
    assert_eq!(
        duplicates,
        counts["duplicates"].as_u64().unwrap(),
        "{what}: duplicates"
    );
    assert_eq!(
        accepted + rejected + duplicates,
        counts["received"].as_u64().unwrap(),
        "{what}: received = accepted + rejected + duplicates"
    );
    let expected: BTreeMap<String, u64> = counts["rejected_by_reason"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(reasons(ch), expected, "{what}: rejections by reason");
    let distinct = count(ch, "SELECT uniqExact(event_id) FROM meterflow.usage_events");
    assert_eq!(distinct, accepted, "{what}: no event accepted twice");
    // Where every accepted event was billed, and what the pricing input holds.
    let placed = |sql: &str| ch.query(sql).unwrap();
    // Summed meters: the pricing input is the accepted quantities, wherever they were billed.
    let by_period = "SELECT service_period, invoice_period, sum(multiIf(correction_action = 'void', -1, correction_action = 'amend', 0, 1)), toString(sum(quantity)) FROM meterflow.usage_events WHERE billable = 1 AND sku NOT IN ('seats', 'active_users') GROUP BY service_period, invoice_period HAVING sum(quantity) != 0 OR sum(multiIf(correction_action = 'void', -1, correction_action = 'amend', 0, 1)) != 0 ORDER BY service_period, invoice_period";
    let in_pricing = "SELECT service_period, invoice_period, sum(events * sign), toString(sum(quantity * sign)) FROM meterflow.line_usage WHERE sku NOT IN ('seats', 'active_users') GROUP BY service_period, invoice_period HAVING sum(sign) != 0 ORDER BY service_period, invoice_period";
    assert_eq!(
        placed(in_pricing),
        placed(by_period),
        "{what}: the pricing input holds exactly the accepted usage"
    );
    // Peak and distinct-count meters (`gen --terms`): the pricing input of a service period is
    // the peak, and the number of distinct users, of the readings that were not voided.
    let standing = "billable = 1 AND correction_action = '' AND event_id NOT IN (SELECT correction_of FROM meterflow.usage_events WHERE correction_action = 'void')";
    for (sku, measure) in [
        ("seats", "max(quantity)"),
        ("active_users", "uniqExact(attributes)"),
    ] {
        let from_events = format!("SELECT customer_id, service_period, toString({measure}) FROM meterflow.usage_events WHERE sku = '{sku}' AND {standing} GROUP BY customer_id, service_period ORDER BY customer_id, service_period");
        let in_pricing = format!("SELECT customer_id, service_period, toString(sum(quantity * sign)) FROM meterflow.line_usage WHERE sku = '{sku}' GROUP BY customer_id, service_period HAVING sum(quantity * sign) != 0 ORDER BY customer_id, service_period");
        assert_eq!(
            numbers(&placed(&in_pricing)),
            numbers(&placed(&from_events)),
            "{what}: {sku} is billed at {measure} of its standing readings"
        );
    }
    assert_same(&from_clickhouse(ch), &money, what);
    assert_same(
        &table_from_clickhouse(ch, "shadow_invoice_lines"),
        &table_from_csv(oracle, "shadow_invoice_lines"),
        &format!("{what}: shadow lines"),
    );
    let want = signals_from_csv(oracle);
    let got = signals_from_clickhouse(ch);
    assert_eq!(got, want, "{what}: entitlement signals");
    let want = buckets_from_csv(oracle);
    assert_same_rows(&buckets_from_clickhouse(ch), &want, what, "usage buckets");
    assert_same_rows(
        &anomalies_from_clickhouse(ch),
        &anomalies_from_csv(oracle),
        what,
        "anomalies",
    );
    let committed: serde_json::Value = serde_json::from_str(
        ch.query("SELECT counts FROM meterflow.sink_progress ORDER BY epoch DESC LIMIT 1")
            .unwrap()
            .trim()
            .replace("\\\\", "\\")
            .as_str(),
    )
    .unwrap();
    assert_eq!(
        committed["received"], counts["received"],
        "{what}: the last commit counts every record"
    );
    counts
}

/// Current rows of a signed table, one normalised string per field.
pub type RowSet = std::collections::BTreeSet<Vec<String>>;

/// Asserts that ClickHouse holds the rows of the embedded run, naming the differences.
fn assert_same_rows(got: &RowSet, want: &RowSet, what: &str, table: &str) {
    assert!(
        got == want,
        "{what}: {table} differ; only in ClickHouse: {:?}; only in the embedded run: {:?}",
        got.difference(want).collect::<Vec<_>>(),
        want.difference(got).collect::<Vec<_>>()
    );
}

/// RFC 3339 (as in the embedded output) to Unix seconds.
fn unix(text: &str) -> String {
    let t = meterflow_schemas::time::EventTime::parse_rfc3339(text).unwrap();
    t.0.div_euclid(1000).to_string()
}

fn decimal(text: &str) -> String {
    Quantity::parse(text).unwrap().to_string()
}

/// Current `usage_buckets` of an embedded run: customer, SKU, start (Unix s), events, quantity.
pub fn buckets_from_csv(out: &Path) -> RowSet {
    current_rows(&read_table(out, "usage_buckets").unwrap())
        .into_iter()
        .map(|r| {
            vec![
                r["customer_id"].clone(),
                r["sku"].clone(),
                unix(&r["bucket_start"]),
                r["events"].clone(),
                decimal(&r["quantity"]),
            ]
        })
        .collect()
}

/// Current `usage_buckets` in ClickHouse, like [`buckets_from_csv`] (signs summed here).
pub fn buckets_from_clickhouse(ch: &ClickHouseServer) -> RowSet {
    current_from_clickhouse(
        ch,
        "SELECT customer_id, sku, toUnixTimestamp(bucket_start), events, toString(quantity), sign FROM meterflow.usage_buckets FORMAT TabSeparated",
        &[4],
    )
}

/// Current `anomalies` of an embedded run: customer, SKU, kind, window (Unix s), observed,
/// expected, score, severity, baseline.
pub fn anomalies_from_csv(out: &Path) -> RowSet {
    current_rows(&read_table(out, "anomalies").unwrap())
        .into_iter()
        .map(|r| {
            vec![
                r["customer_id"].clone(),
                r["sku"].clone(),
                r["kind"].clone(),
                unix(&r["window_start"]),
                unix(&r["window_end"]),
                decimal(&r["observed"]),
                decimal(&r["expected"]),
                decimal(&r["score"]),
                r["severity"].clone(),
                r["baseline"].clone(),
            ]
        })
        .collect()
}

/// Current `anomalies` in ClickHouse, like [`anomalies_from_csv`].
pub fn anomalies_from_clickhouse(ch: &ClickHouseServer) -> RowSet {
    current_from_clickhouse(
        ch,
        "SELECT customer_id, sku, kind, toUnixTimestamp(window_start), toUnixTimestamp(window_end), toString(observed), toString(expected), toString(score), severity, baseline, sign FROM meterflow.anomalies FORMAT TabSeparated",
        &[5, 6, 7],
    )
}

/// Rows of a TabSeparated query whose last field is the sign, with the signs summed (client
/// side: ClickHouse 18.16 crashes grouping by a `Decimal128`); `decimals` are normalised.
fn current_from_clickhouse(ch: &ClickHouseServer, sql: &str, decimals: &[usize]) -> RowSet {
    let mut net: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for l in ch.query(sql).unwrap().lines() {
        let mut f: Vec<String> = l.split('\t').map(str::to_string).collect();
        let sign: i64 = f.pop().unwrap().parse().unwrap();
        for &i in decimals {
            f[i] = decimal(&f[i]);
        }
        *net.entry(f).or_default() += sign;
    }
    net.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, _)| k)
        .collect()
}

/// Current entitlement signals of an embedded run: identity, `at_quantity`, `allowance`.
pub fn signals_from_csv(out: &Path) -> RowSet {
    current_rows(&read_table(out, "entitlement_signals").unwrap())
        .into_iter()
        .map(|r| {
            let mut row: Vec<String> = [
                "customer_id",
                "contract_id",
                "sku",
                "period",
                "signal",
                "percent",
            ]
            .iter()
            .map(|k| r[*k].clone())
            .collect();
            row.push(decimal(&r["at_quantity"]));
            row.push(decimal(&r["allowance"]));
            row
        })
        .collect()
}

/// Current entitlement signals in ClickHouse, like [`signals_from_csv`].
pub fn signals_from_clickhouse(ch: &ClickHouseServer) -> RowSet {
    current_from_clickhouse(
        ch,
        "SELECT customer_id, contract_id, sku, period, signal, percent, toString(at_quantity), toString(allowance), sign FROM meterflow.entitlement_signals FORMAT TabSeparated",
        &[6, 7],
    )
}

/// The line types (`usage`, `discount`, `tax`, ...) among the current invoice lines of an
/// embedded run's output.
pub fn line_types(out: &Path) -> std::collections::BTreeSet<String> {
    current_rows(&read_table(out, "invoice_lines").unwrap())
        .into_iter()
        .map(|r| r["line_type"].clone())
        .collect()
}

/// Asserts that an embedded run's invoice has every line type in `kinds`.
pub fn assert_invoice_has(out: &Path, kinds: &[&str]) {
    let have = line_types(out);
    for k in kinds {
        assert!(
            have.contains(*k),
            "the invoice lines have no `{k}` line (only {have:?}): the test would not check it"
        );
    }
}

/// Asserts that the oracle's counts show at least one of each `kinds` (e.g. `corrections`).
pub fn assert_stream_has(counts: &serde_json::Value, kinds: &[&str]) {
    for kind in kinds {
        assert!(
            counts[*kind].as_u64().unwrap_or(0) > 0,
            "the test stream has no {kind}: {counts}"
        );
    }
}

/// The dedup keys of the alerts that should be open after an embedded run: its current
/// entitlement signals and anomalies.
pub fn open_alert_keys(out: &Path) -> std::collections::BTreeSet<String> {
    let signals = current_rows(&read_table(out, "entitlement_signals").unwrap());
    let anomalies = current_rows(&read_table(out, "anomalies").unwrap());
    signals
        .iter()
        .map(|r| {
            // Burn signals page once per period: their projected percent is not in the key.
            let burn = ["commitment_burn", "budget_burn"].contains(&r["signal"].as_str());
            format!(
                "meterflow:entitlement:{}:{}:{}:{}:{}:{}",
                r["customer_id"],
                r["contract_id"],
                r["sku"],
                r["period"],
                r["signal"],
                if burn { "0" } else { r["percent"].as_str() }
            )
        })
        .chain(anomalies.iter().map(|r| {
            format!(
                "meterflow:anomaly:{}:{}:{}:{}",
                r["customer_id"], r["sku"], r["kind"], r["window_start"]
            )
        }))
        .collect()
}

/// Tab-separated rows with decimals written without trailing zeros (`58.000000000` → `58`).
fn numbers(tsv: &str) -> String {
    tsv.lines()
        .map(|l| {
            l.split('\t')
                .map(|f| match f.split_once('.') {
                    Some((int, frac))
                        if int.parse::<i128>().is_ok()
                            && frac.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        let frac = frac.trim_end_matches('0');
                        if frac.is_empty() {
                            int.to_string()
                        } else {
                            format!("{int}.{frac}")
                        }
                    }
                    _ => f.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every signed table's current rows, and where each accepted event, rejection and duplicate
/// went, in `database`: rows summed over everything but the columns that say when and by which
/// run they were written. Two runs that billed the same have equal states.
pub fn billed_state(ch: &ClickHouseServer, database: &str) -> BTreeMap<String, String> {
    // Where each record went; the signed tables are compared on all their other columns.
    let facts = |table: &str| match table {
        "usage_events" => {
            Some("event_id, service_period, invoice_period, arrival, toString(quantity)")
        }
        "rejections" => Some("reason, source, partition, offset"),
        "duplicates" => Some("event_id, source, partition, offset"),
        _ => None,
    };
    let mut state = BTreeMap::new();
    for table in meterflow_schemas::tables::outputs().map(|t| t.name) {
        let rows = match facts(table) {
            Some(columns) => {
                // Sorted here: records of one batched message share their offset.
                let sql = format!("SELECT {columns} FROM {database}.{table} FORMAT TSV");
                let mut rows: Vec<String> = ch
                    .query(&sql)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect();
                rows.sort_unstable();
                rows.join("\n")
            }
            None => current_signed_rows(ch, database, table),
        };
        state.insert(table.to_string(), rows);
    }
    state
}

/// A signed table's rows summed by everything but `sign` and the columns that say when and by
/// which run a row was written; one line per row that is still there, with its count.
fn current_signed_rows(ch: &ClickHouseServer, database: &str, table: &str) -> String {
    const RUN_COLUMNS: &str = "'sign', 'version', 'epoch', 'generation', 'batch'";
    let columns = ch
        .query(&format!(
            "SELECT name FROM system.columns WHERE database = '{database}' AND table = '{table}' AND name NOT IN ({RUN_COLUMNS}) ORDER BY name FORMAT TSV"
        ))
        .unwrap()
        .lines()
        .collect::<Vec<_>>()
        .join(", ");
    // Summed here: ClickHouse 18.16 crashes grouping by Decimal(38, _) columns (and drops a
    // `toString` around them from GROUP BY).
    let signed = ch
        .query(&format!(
            "SELECT {columns}, sign FROM {database}.{table} FORMAT TSV"
        ))
        .unwrap();
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    for line in signed.lines() {
        let (row, sign) = line.rsplit_once('\t').unwrap();
        *sums.entry(row).or_default() += sign.parse::<i64>().unwrap();
    }
    sums.iter()
        .filter(|(_, n)| **n != 0)
        .map(|(row, n)| format!("{row}\t{n}\n"))
        .collect()
}

/// Writes `dir/reference.toml`, the config `dir/config` with ClickHouse database `reference` and
/// (for Kafka input) a consumer group of its own, and migrates that database. Returns the new
/// config's path: an uninterrupted run with it is what a crashed one is compared with.
pub fn reference_config(ch: &ClickHouseServer, dir: &Path, config: &str) -> String {
    let text = std::fs::read_to_string(dir.join(config))
        .unwrap()
        .replace("[clickhouse]\n", "[clickhouse]\ndatabase = \"reference\"\n")
        .replace("[kafka]\n", "[kafka]\ngroup_id = \"reference\"\n");
    let path = dir.join("reference.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    crate::meterflow_ok(&["migrate", "--config", &path, "--clickhouse-url", &ch.url()]);
    path
}

/// Asserts that database `meterflow` billed exactly what database `reference` did: every table
/// of [`billed_state`] equal, and none of the reference's empty.
pub fn assert_billed_like_reference(ch: &ClickHouseServer, what: &str) {
    let (got, want) = (billed_state(ch, "meterflow"), billed_state(ch, "reference"));
    for (table, rows) in &want {
        assert!(!rows.is_empty(), "{table}: the reference run wrote rows");
        assert!(
            got[table] == *rows,
            "{what}: {table} differs from the uninterrupted run; only after the kills: {:?}; only uninterrupted: {:?}",
            got[table].lines().filter(|l| !rows.contains(l)).take(5).collect::<Vec<_>>(),
            rows.lines().filter(|l| !got[table].contains(l)).take(5).collect::<Vec<_>>(),
        );
    }
}
