//! The `exports` table: every marketplace metering record `meterflow export` wrote or sent,
//! appended to ClickHouse, or kept as `exports/part-0.csv` beside a run's CSV tables.

use std::path::Path;
use std::sync::Arc;

use clickhouse::Row;
use meterflow_schemas::catalog::{Catalog, MarketplaceKind};
use meterflow_schemas::marketplace::Exported;
use meterflow_schemas::money::Quantity;
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::{Deserialize, Serialize};

use crate::reports::tables::read_table;
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::sink::seconds;
use crate::sinks::files::replace_table;

#[derive(Row, Serialize, Deserialize)]
struct ExportRow {
    exported_at: u32,
    export_id: String,
    marketplace: String,
    listing: String,
    product: String,
    contract_id: String,
    customer_id: String,
    marketplace_customer: String,
    sku: String,
    dimension: String,
    usage_hour: u32,
    record_time: u32,
    record_kind: String,
    quantity: i128,
    record_key: String,
    status: String,
    request: String,
    response_id: String,
    detail: String,
    allocations: String,
}

fn time(s: u32) -> EventTime {
    EventTime(i64::from(s) * 1000)
}

/// Every `exports` row under `out` (none before the first export).
pub fn from_files(out: &Path) -> Result<Vec<Exported>, String> {
    if !out.join(tables::EXPORTS.name).exists() {
        return Ok(Vec::new());
    }
    let rows = read_table(out, tables::EXPORTS.name)
        .map_err(|e| format!("cannot read {}/exports: {e}", out.display()))?;
    let at = |r: &crate::reports::tables::Row, k: &str| {
        EventTime::parse_rfc3339(r.get(k).map_or("", |s| s.as_str()))
            .map_err(|e| format!("exports {k}: {e}"))
    };
    let text = |r: &crate::reports::tables::Row, k: &str| r.get(k).cloned().unwrap_or_default();
    rows.iter()
        .map(|r| {
            Ok(Exported {
                exported_at: at(r, "exported_at")?,
                export_id: text(r, "export_id"),
                marketplace: text(r, "marketplace"),
                listing: text(r, "listing"),
                product: text(r, "product"),
                contract_id: text(r, "contract_id"),
                customer_id: text(r, "customer_id"),
                marketplace_customer: text(r, "marketplace_customer"),
                sku: text(r, "sku"),
                dimension: text(r, "dimension"),
                usage_hour: at(r, "usage_hour")?,
                record_time: at(r, "record_time")?,
                record_kind: text(r, "record_kind"),
                quantity: Quantity::parse(&text(r, "quantity"))
                    .map_err(|e| format!("exports quantity: {e}"))?,
                record_key: text(r, "record_key"),
                status: text(r, "status"),
                request: text(r, "request"),
                response_id: text(r, "response_id"),
                detail: text(r, "detail"),
                allocations: text(r, "allocations"),
            })
        })
        .collect()
}

/// Replaces `out/exports/` with `all` (earlier exports included).
pub fn to_files(
    out: &Path,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    all: &[Exported],
) -> Result<(), String> {
    replace_table(out, &tables::EXPORTS, catalog, period, all.to_vec())
}

/// The `exports` rows of one marketplace in ClickHouse.
pub fn from_clickhouse(ch: &ClickHouse, kind: MarketplaceKind) -> Result<Vec<Exported>, String> {
    let rows: Vec<ExportRow> = ch.fetch(&format!(
        "SELECT exported_at, export_id, marketplace, listing, product, contract_id, customer_id, \
         marketplace_customer, sku, dimension, usage_hour, record_time, record_kind, quantity, \
         record_key, status, request, response_id, detail, allocations FROM {{db}}.exports WHERE marketplace = '{}'",
        kind.as_str()
    ))?;
    Ok(rows
        .into_iter()
        .map(|r| Exported {
            exported_at: time(r.exported_at),
            export_id: r.export_id,
            marketplace: r.marketplace,
            listing: r.listing,
            product: r.product,
            contract_id: r.contract_id,
            customer_id: r.customer_id,
            marketplace_customer: r.marketplace_customer,
            sku: r.sku,
            dimension: r.dimension,
            usage_hour: time(r.usage_hour),
            record_time: time(r.record_time),
            record_kind: r.record_kind,
            quantity: Quantity(r.quantity),
            record_key: r.record_key,
            status: r.status,
            request: r.request,
            response_id: r.response_id,
            detail: r.detail,
            allocations: r.allocations,
        })
        .collect())
}

/// Appends records to ClickHouse.
pub fn to_clickhouse(ch: &ClickHouse, new: &[Exported]) -> Result<(), String> {
    let rows: Vec<ExportRow> = new
        .iter()
        .map(|e| ExportRow {
            exported_at: seconds(e.exported_at),
            export_id: e.export_id.clone(),
            marketplace: e.marketplace.clone(),
            listing: e.listing.clone(),
            product: e.product.clone(),
            contract_id: e.contract_id.clone(),
            customer_id: e.customer_id.clone(),
            marketplace_customer: e.marketplace_customer.clone(),
            sku: e.sku.clone(),
            dimension: e.dimension.clone(),
            usage_hour: seconds(e.usage_hour),
            record_time: seconds(e.record_time),
            record_kind: e.record_kind.clone(),
            quantity: e.quantity.0,
            record_key: e.record_key.clone(),
            status: e.status.clone(),
            request: e.request.clone(),
            response_id: e.response_id.clone(),
            detail: e.detail.clone(),
            allocations: e.allocations.clone(),
        })
        .collect();
    ch.insert::<ExportRow>(tables::EXPORTS.name, &rows)
}
