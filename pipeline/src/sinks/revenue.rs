//! The `revenue_schedule` table: the signed rows `meterflow revenue` states and retracts,
//! appended to ClickHouse, or kept as `revenue_schedule/part-0.csv` beside a run's CSV tables;
//! and the `remaining_obligations` table `meterflow revenue --rpo` writes.

use std::path::Path;
use std::sync::Arc;

use clickhouse::Row;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::Amount;
use meterflow_schemas::revenue::{
    is_catch_up, Amounts, Obligated, Schedule, ScheduleKey, Scheduled,
};
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::{Deserialize, Serialize};

use crate::reports::tables::read_table;
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::sink::seconds;
use crate::sinks::files::replace_table;

#[derive(Row, Serialize, Deserialize)]
struct ScheduleRow {
    computed_at: u32,
    run_id: String,
    customer_id: String,
    contract_id: String,
    obligation: String,
    service_period: String,
    period: String,
    currency: String,
    catch_up: u8,
    billed: i128,
    recognised: i128,
    deferred: i128,
    unbilled: i128,
    sign: i8,
}

/// Every `revenue_schedule` row under `out` (none before the first schedule).
pub fn from_files(out: &Path) -> Result<Vec<Scheduled>, String> {
    if !out.join(tables::REVENUE_SCHEDULE.name).exists() {
        return Ok(Vec::new());
    }
    let rows = read_table(out, tables::REVENUE_SCHEDULE.name)
        .map_err(|e| format!("cannot read {}/revenue_schedule: {e}", out.display()))?;
    rows.iter()
        .map(|r| {
            let text = |k: &str| r.get(k).cloned().unwrap_or_default();
            let amount =
                |k: &str| Amount::parse(&text(k)).map_err(|e| format!("revenue_schedule {k}: {e}"));
            Ok(Scheduled {
                computed_at: EventTime::parse_rfc3339(&text("computed_at"))
                    .map_err(|e| format!("revenue_schedule computed_at: {e}"))?,
                run_id: text("run_id"),
                key: ScheduleKey {
                    customer_id: text("customer_id"),
                    contract_id: text("contract_id"),
                    obligation: text("obligation"),
                    service_period: text("service_period"),
                    period: text("period"),
                    currency: text("currency"),
                },
                amounts: Amounts {
                    billed: amount("billed")?,
                    recognised: amount("recognised")?,
                    deferred: amount("deferred")?,
                    unbilled: amount("unbilled")?,
                },
                sign: text("sign")
                    .parse()
                    .map_err(|e| format!("revenue_schedule sign: {e}"))?,
            })
        })
        .collect()
}

/// Replaces `out/revenue_schedule/` with `all` (earlier rows included).
pub fn to_files(
    out: &Path,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
    all: &[Scheduled],
) -> Result<(), String> {
    replace_table(
        out,
        &tables::REVENUE_SCHEDULE,
        catalog,
        period,
        all.to_vec(),
    )
}

/// The rows in ClickHouse.
pub fn from_clickhouse(ch: &ClickHouse) -> Result<Vec<Scheduled>, String> {
    let rows: Vec<ScheduleRow> = ch.fetch(
        "SELECT computed_at, run_id, customer_id, contract_id, obligation, service_period, period, \
         currency, catch_up, billed, recognised, deferred, unbilled, sign FROM {db}.revenue_schedule",
    )?;
    Ok(rows
        .into_iter()
        .map(|r| Scheduled {
            computed_at: EventTime(i64::from(r.computed_at) * 1000),
            run_id: r.run_id,
            key: ScheduleKey {
                customer_id: r.customer_id,
                contract_id: r.contract_id,
                obligation: r.obligation,
                service_period: r.service_period,
                period: r.period,
                currency: r.currency,
            },
            amounts: Amounts {
                billed: Amount(r.billed),
                recognised: Amount(r.recognised),
                deferred: Amount(r.deferred),
                unbilled: Amount(r.unbilled),
            },
            sign: r.sign,
        })
        .collect())
}

/// The schedule as it stands, netted by ClickHouse (`sum(x × sign)` per row key, the sums as
/// exact text) instead of read row by row; rows that net to nothing are left out, as
/// [`meterflow_schemas::revenue::net`] leaves them.
pub fn netted_from_clickhouse(ch: &ClickHouse) -> Result<Schedule, String> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Netted {
        customer_id: String,
        contract_id: String,
        obligation: String,
        service_period: String,
        period: String,
        currency: String,
        billed: String,
        recognised: String,
        deferred: String,
        unbilled: String,
    }
    let rows: Vec<Netted> = ch.fetch(
        "SELECT customer_id, contract_id, obligation, service_period, period, currency, \
         toString(sum(billed * sign)) AS billed, toString(sum(recognised * sign)) AS recognised, \
         toString(sum(deferred * sign)) AS deferred, toString(sum(unbilled * sign)) AS unbilled \
         FROM {db}.revenue_schedule \
         GROUP BY customer_id, contract_id, obligation, service_period, period, currency",
    )?;
    let amount = |x: &str| Amount::parse(x).unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|r| {
            let amounts = Amounts {
                billed: amount(&r.billed),
                recognised: amount(&r.recognised),
                deferred: amount(&r.deferred),
                unbilled: amount(&r.unbilled),
            };
            let key = ScheduleKey {
                customer_id: r.customer_id,
                contract_id: r.contract_id,
                obligation: r.obligation,
                service_period: r.service_period,
                period: r.period,
                currency: r.currency,
            };
            (key, amounts)
        })
        .filter(|(_, a)| *a != Amounts::default())
        .collect())
}

/// Appends rows to ClickHouse.
pub fn to_clickhouse(ch: &ClickHouse, new: &[Scheduled]) -> Result<(), String> {
    let rows: Vec<ScheduleRow> = new
        .iter()
        .map(|s| ScheduleRow {
            computed_at: seconds(s.computed_at),
            run_id: s.run_id.clone(),
            customer_id: s.key.customer_id.clone(),
            contract_id: s.key.contract_id.clone(),
            obligation: s.key.obligation.clone(),
            service_period: s.key.service_period.clone(),
            period: s.key.period.clone(),
            currency: s.key.currency.clone(),
            catch_up: u8::from(is_catch_up(&s.key)),
            billed: s.amounts.billed.0,
            recognised: s.amounts.recognised.0,
            deferred: s.amounts.deferred.0,
            unbilled: s.amounts.unbilled.0,
            sign: s.sign,
        })
        .collect();
    ch.insert::<ScheduleRow>(tables::REVENUE_SCHEDULE.name, &rows)
}

#[derive(Row, Serialize)]
struct ObligatedRow<'a> {
    computed_at: u32,
    run_id: &'a str,
    as_of: u32,
    customer_id: &'a str,
    contract_id: &'a str,
    currency: &'a str,
    within_12_months: i128,
    total: i128,
}

/// Writes what remained of each contract: appended to ClickHouse (each `--rpo` a snapshot of
/// its own, by `run_id`), or in place of the last snapshot beside a run's CSV tables.
pub fn remaining_to(
    ch: Option<&ClickHouse>,
    (out, catalog, period): (&Path, Arc<Catalog>, PeriodUnit),
    rows: Vec<Obligated>,
) -> Result<(), String> {
    let Some(ch) = ch else {
        return replace_table(out, &tables::REMAINING_OBLIGATIONS, catalog, period, rows);
    };
    let rows: Vec<ObligatedRow> = rows
        .iter()
        .map(|o| ObligatedRow {
            computed_at: seconds(o.computed_at),
            run_id: &o.run_id,
            as_of: seconds(o.as_of),
            customer_id: &o.remaining.customer,
            contract_id: &o.remaining.contract,
            currency: &o.remaining.currency,
            within_12_months: o.remaining.within.0,
            total: o.remaining.total.0,
        })
        .collect();
    ch.insert::<ObligatedRow<'static>>(tables::REMAINING_OBLIGATIONS.name, &rows)
}
