//! The `scorecard` table: every number `meterflow scorecard` counted, appended per run to
//! ClickHouse, or written as `scorecard/part-0.csv` beside a run's CSV tables.

use std::path::Path;
use std::sync::Arc;

use clickhouse::Row;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::lag::Lagged;
use meterflow_schemas::scorecard::Scored;
use meterflow_schemas::tables;
use meterflow_schemas::time::PeriodUnit;
use serde::Serialize;

use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::sink::seconds;
use crate::sinks::files::replace_table;

#[derive(Row, Serialize)]
struct ScorecardRow<'a> {
    computed_at: u32,
    run_id: &'a str,
    measure: &'a str,
    cause: &'a str,
    period: &'a str,
    customer_id: &'a str,
    sku: &'a str,
    currency: &'a str,
    events: i64,
    quantity: i128,
    amount: i128,
}

/// Replaces `out/scorecard/` with the rows.
pub fn to_files(
    out: &Path,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    rows: &[Scored],
) -> Result<(), String> {
    replace_table(out, &tables::SCORECARD, catalog, period, rows.to_vec())
}

/// Appends the rows to the `scorecard` table.
pub fn to_clickhouse(ch: &ClickHouse, rows: &[Scored]) -> Result<(), String> {
    let rows: Vec<ScorecardRow> = rows
        .iter()
        .map(|r| ScorecardRow {
            computed_at: seconds(r.computed_at),
            run_id: &r.run_id,
            measure: r.measure,
            cause: &r.cause,
            period: &r.key.period,
            customer_id: &r.key.customer_id,
            sku: &r.key.sku,
            currency: &r.currency,
            events: r.counted.events,
            quantity: r.counted.quantity.0,
            amount: r.counted.amount.0,
        })
        .collect();
    for chunk in rows.chunks(100_000) {
        ch.insert::<ScorecardRow<'static>>(tables::SCORECARD.name, chunk)?;
    }
    Ok(())
}

#[derive(Row, Serialize)]
struct LagRow<'a> {
    computed_at: u32,
    run_id: &'a str,
    period: &'a str,
    source: &'a str,
    partition: i32,
    stage: &'a str,
    events: u64,
    p50_ms: u64,
    p95_ms: u64,
    p99_ms: u64,
    max_ms: u64,
}

/// Replaces `out/metering_lag/` with the rows.
pub fn lag_to_files(
    out: &Path,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    rows: &[Lagged],
) -> Result<(), String> {
    replace_table(out, &tables::METERING_LAG, catalog, period, rows.to_vec())
}

/// Appends the rows to the `metering_lag` table.
pub fn lag_to_clickhouse(ch: &ClickHouse, rows: &[Lagged]) -> Result<(), String> {
    let rows: Vec<LagRow> = rows
        .iter()
        .map(|r| LagRow {
            computed_at: seconds(r.computed_at),
            run_id: &r.run_id,
            period: &r.period,
            source: &r.source,
            partition: r.partition,
            stage: r.stage,
            events: r.summary.events,
            p50_ms: r.summary.p50_ms,
            p95_ms: r.summary.p95_ms,
            p99_ms: r.summary.p99_ms,
            max_ms: r.summary.max_ms,
        })
        .collect();
    ch.insert::<LagRow<'static>>(tables::METERING_LAG.name, &rows)
}
