//! The `reconciliation` table: every line `meterflow reconcile` checked, appended per run to
//! ClickHouse, or written as `reconciliation/part-0.csv` beside a run's CSV tables.

use std::path::Path;
use std::sync::Arc;

use clickhouse::Row;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::reconcile::Reconciled;
use meterflow_schemas::tables;
use meterflow_schemas::time::PeriodUnit;
use serde::Serialize;

use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::sink::seconds;
use crate::sinks::files::replace_table;

#[derive(Row, Serialize)]
struct ReconciliationRow<'a> {
    checked_at: u32,
    run_id: &'a str,
    comparison: &'a str,
    customer_id: &'a str,
    contract_id: &'a str,
    sku: &'a str,
    region: &'a str,
    service_period: &'a str,
    invoice_period: &'a str,
    signal: &'a str,
    expected_events: i64,
    billed_events: i64,
    expected_quantity: i128,
    billed_quantity: i128,
    drift: u8,
    event_ids: String,
    currency: &'a str,
    expected_amount: i128,
    billed_amount: i128,
    expected_amount_exact: i128,
    billed_amount_exact: i128,
    line_type: &'a str,
}

/// Replaces `out/reconciliation/` with the checked lines.
pub fn to_files(
    out: &Path,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    checked: &[Reconciled],
) -> Result<(), String> {
    replace_table(
        out,
        &tables::RECONCILIATION,
        catalog,
        period,
        checked.to_vec(),
    )
}

/// Appends the checked lines to the `reconciliation` table.
pub fn to_clickhouse(ch: &ClickHouse, checked: &[Reconciled]) -> Result<(), String> {
    let rows: Vec<ReconciliationRow> = checked
        .iter()
        .map(|c| ReconciliationRow {
            checked_at: seconds(c.checked_at),
            run_id: &c.run_id,
            comparison: c.check,
            customer_id: &c.line.customer_id,
            contract_id: &c.line.contract_id,
            sku: &c.line.sku,
            region: &c.line.region,
            service_period: &c.line.service_period,
            invoice_period: &c.line.invoice_period,
            signal: &c.signal,
            expected_events: c.expected.events,
            billed_events: c.billed.events,
            expected_quantity: c.expected.quantity.0,
            billed_quantity: c.billed.quantity.0,
            drift: u8::from(c.drifts()),
            currency: &c.currency,
            // Decimal(38, 9) from the amount's 18 digits (as billed, it has at most 9).
            expected_amount: c.expected_money.unwrap_or_default().billed.0 / 1_000_000_000,
            billed_amount: c.billed_money.billed.0 / 1_000_000_000,
            expected_amount_exact: c.expected_money.unwrap_or_default().exact.0,
            billed_amount_exact: c.billed_money.exact.0,
            line_type: &c.line_type,
            event_ids: if c.drifts() {
                c.event_ids.join(" ")
            } else {
                String::new()
            },
        })
        .collect();
    for chunk in rows.chunks(100_000) {
        ch.insert::<ReconciliationRow<'static>>(tables::RECONCILIATION.name, chunk)?;
    }
    Ok(())
}
