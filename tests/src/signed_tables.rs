//! Signed output tables as a reader sees them once `sign` is summed: what the benchmark and the
//! tests compare between meterflow and the naive baseline (or between two runs).

use std::collections::HashMap;
use std::path::Path;

/// The signed tables the naive baseline (`benchmarks/src/bin/baseline.rs`) writes as well.
pub const BASELINE_TABLES: &[&str] = &[
    "invoice_lines",
    "rated_usage",
    "line_usage",
    "usage_buckets",
    "anomalies",
    "entitlement_signals",
];

/// `table`'s rows in the run output `out` (every worker's part) with their net multiplicity;
/// rows that cancel out are left out. The last two columns of every signed table are `sign` and
/// `version` (numbers, never quoted), so a row is its line without them.
pub fn consolidated(out: &Path, table: &str) -> Result<HashMap<String, i64>, String> {
    let dir = out.join(table);
    let parts = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rows: HashMap<String, i64> = HashMap::new();
    for part in parts {
        let path = part.map_err(|e| e.to_string())?.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines().skip(1) {
            let mut fields = line.rsplitn(3, ',');
            let (_version, sign, row) = (fields.next(), fields.next(), fields.next());
            let (Some(sign), Some(row)) = (sign, row) else {
                return Err(format!("{table}: a row without sign and version: {line}"));
            };
            let sign: i64 = sign
                .parse()
                .map_err(|_| format!("{table}: sign {sign:?} is not a number"))?;
            *rows.entry(row.to_owned()).or_default() += sign;
        }
    }
    rows.retain(|_, n| *n != 0);
    Ok(rows)
}

/// Every table of `tables` holds the same rows in `b` as in `a` (named `a_name` and `b_name` in
/// the error, which shows a few rows found in one only).
pub fn same_tables(
    (a, a_name): (&Path, &str),
    (b, b_name): (&Path, &str),
    tables: &[&str],
) -> Result<(), String> {
    for table in tables {
        let (x, y) = (consolidated(a, table)?, consolidated(b, table)?);
        if x != y {
            let only = |p: &HashMap<String, i64>, q: &HashMap<String, i64>| {
                p.iter()
                    .filter(|(k, n)| q.get(*k) != Some(n))
                    .take(3)
                    .map(|(k, n)| format!("{k} (x{n})"))
                    .collect::<Vec<_>>()
            };
            return Err(format!(
                "{b_name} and {a_name} disagree on {table} ({} rows against {}): only in {a_name}: {:?}; only in {b_name}: {:?}",
                y.len(),
                x.len(),
                only(&x, &y),
                only(&y, &x)
            ));
        }
    }
    Ok(())
}
