//! The `quarantine_resolutions` table: rejections resolved by a replayed fix, appended to
//! ClickHouse, or written as `quarantine_resolutions/part-0.csv` beside a run's CSV tables.

use std::path::Path;
use std::sync::Arc;

use clickhouse::Row;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::quarantine::Resolution;
use meterflow_schemas::tables;
use meterflow_schemas::time::PeriodUnit;
use serde::Serialize;

use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::sink::seconds;
use crate::sinks::files::replace_table;

#[derive(Row, Serialize)]
struct ResolutionRow<'a> {
    resolved_at: u32,
    run_id: &'a str,
    event_id: &'a str,
    reason: &'a str,
    rejected_source: &'a str,
    rejected_offset: u64,
    replay_source: &'a str,
    replay_offset: u64,
    sign: i8,
}

/// Replaces `out/quarantine_resolutions/` with every resolution (earlier ones included).
pub fn to_files(
    out: &Path,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    all: &[Resolution],
) -> Result<(), String> {
    replace_table(
        out,
        &tables::QUARANTINE_RESOLUTIONS,
        catalog,
        period,
        all.to_vec(),
    )
}

/// Appends resolutions to ClickHouse.
pub fn to_clickhouse(ch: &ClickHouse, new: &[Resolution]) -> Result<(), String> {
    let rows: Vec<ResolutionRow> = new
        .iter()
        .map(|r| ResolutionRow {
            resolved_at: seconds(r.resolved_at),
            run_id: &r.run_id,
            event_id: &r.event_id,
            reason: &r.reason,
            rejected_source: &r.rejected_source,
            rejected_offset: r.rejected_offset,
            replay_source: &r.replay_source,
            replay_offset: r.replay_offset,
            sign: r.sign,
        })
        .collect();
    ch.insert::<ResolutionRow<'static>>(tables::QUARANTINE_RESOLUTIONS.name, &rows)
}
