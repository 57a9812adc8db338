//! One snapshot of a run's output, read from its CSV tables or from ClickHouse.

use std::collections::BTreeMap;
use std::path::Path;

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::lag::Lagged;
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::revenue::{self, Schedule};
use meterflow_schemas::scorecard::Scored;
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::{Deserialize, Serialize};

use crate::reports::invoice_preview::{self, PreviewLine};
use crate::reports::quarantine::{resolutions_from_output, Quarantine};
use crate::reports::scorecard;
use crate::reports::tables::{current_rows, read_table, Row as CsvRow};
use crate::sinks::clickhouse::client::ClickHouse;

/// Usage of one customer and SKU on one day (UTC), net of corrections.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clickhouse::Row, Deserialize)]
pub struct Daily {
    pub day: String,
    pub customer_id: String,
    pub sku: String,
    pub events: i64,
    pub quantity: String,
}

/// Net usage of one contract and SKU in one service period (what entitlements count).
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct ServiceUsage {
    pub customer_id: String,
    pub contract_id: String,
    pub sku: String,
    pub service_period: String,
    pub events: i64,
    pub quantity: String,
}

/// A signal that stands now.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize, Serialize)]
pub struct StandingSignal {
    pub customer_id: String,
    pub contract_id: String,
    pub sku: String,
    pub period: String,
    pub signal: String,
    pub percent: u32,
    pub at_quantity: String,
    pub allowance: String,
}

/// Rejected records of one reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize, Serialize)]
pub struct Rejections {
    pub reason: String,
    pub remediation: String,
    pub records: u64,
    pub unresolved: u64,
}

/// Accepted events of one invoice period, arrival and correction kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Arrivals {
    pub invoice_period: String,
    pub arrival: String,
    pub correction_action: String,
    pub billable: u8,
    pub events: u64,
}

/// An anomaly that stands now.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize, Serialize)]
pub struct Anomaly {
    pub customer_id: String,
    pub sku: String,
    pub kind: String,
    pub window_start: String,
    pub window_end: String,
    pub observed: String,
    pub expected: String,
    pub score: String,
    pub severity: String,
    pub explanation: String,
}

/// What the latest `meterflow reconcile` checked in one comparison and period.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Checked {
    pub run_id: String,
    pub checked_at: String,
    pub comparison: String,
    pub period: String,
    pub lines: u64,
    pub drifting: u64,
}

/// A line the latest `meterflow reconcile` found drifting. Amounts are exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Drifting {
    pub comparison: String,
    pub customer_id: String,
    pub contract_id: String,
    pub sku: String,
    pub region: String,
    pub service_period: String,
    pub invoice_period: String,
    pub signal: String,
    pub line_type: String,
    pub expected_events: i64,
    pub billed_events: i64,
    pub expected_quantity: String,
    pub billed_quantity: String,
    pub currency: String,
    pub expected_amount: String,
    pub billed_amount: String,
    pub event_ids: String,
}

/// One month and stream of the latest revenue forecast (`v_exec_forecast`). Amounts are exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Forecasted {
    pub month: String,
    pub stream: String,
    pub currency: String,
    pub amount: String,
    pub low: String,
    pub high: String,
    pub as_of: String,
}

/// What the running pipeline counted of its sinks (from its `/metrics` or `metrics.prom`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Telemetry {
    /// Where it was read.
    pub from: String,
    /// `(sink, outcome) → alerts`.
    pub alerts: Vec<(String, String, f64)>,
    /// `table → (rows inserted, insert retries, seconds spent inserting)`.
    pub inserts: Vec<(String, f64, f64, f64)>,
    pub watermark_lag_seconds: Option<f64>,
    pub epochs_in_flight: Option<f64>,
}

/// One snapshot of everything the views show.
#[derive(Default)]
pub struct Facts {
    /// Where it was read: an output directory, or a ClickHouse database.
    pub source: String,
    pub read_at: EventTime,
    pub lines: Vec<PreviewLine>,
    pub scored: Vec<Scored>,
    pub lag: Vec<Lagged>,
    pub daily: Vec<Daily>,
    pub service_usage: Vec<ServiceUsage>,
    pub signals: Vec<StandingSignal>,
    pub rejections: Vec<Rejections>,
    pub duplicates: u64,
    pub arrivals: Vec<Arrivals>,
    pub anomalies: Vec<Anomaly>,
    /// The latest reconciliation: what it checked, and the lines it found drifting.
    pub checked: Vec<Checked>,
    pub drifting: Vec<Drifting>,
    /// The latest revenue forecast, when `meterflow forecast` made one.
    pub forecast: Vec<Forecasted>,
    /// The revenue schedule as it stands (its signed rows netted), when `meterflow revenue`
    /// made one.
    pub schedule: Schedule,
    pub telemetry: Option<Telemetry>,
}

/// Money in one currency: rounded to its minor unit for display, and exact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Money {
    pub currency: String,
    pub amount: String,
    pub exact: String,
}

/// Amounts by currency.
pub(super) type ByCurrency = BTreeMap<String, Amount>;

pub(super) fn money_of(by_currency: ByCurrency) -> Vec<Money> {
    by_currency
        .into_iter()
        .map(|(currency, a)| {
            let d = minor_unit_digits(&currency);
            Money {
                amount: a.round_to(d, Rounding::HalfEven).format_fixed(d),
                exact: a.to_string(),
                currency,
            }
        })
        .collect()
}

fn field<'r>(r: &'r CsvRow, name: &str) -> &'r str {
    r.get(name).map_or("", |s| s.as_str())
}

fn num<T: std::str::FromStr + Default>(r: &CsvRow, name: &str) -> T {
    field(r, name).parse().unwrap_or_default()
}

pub(super) fn quantity(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_default()
}

/// The rows of `table` under `out`; none when the run has not written it (yet).
fn rows_of(out: &Path, table: &str) -> Result<Vec<CsvRow>, String> {
    if !out.join(table).exists() {
        return Ok(Vec::new());
    }
    read_table(out, table).map_err(|e| format!("cannot read {}/{table}: {e}", out.display()))
}

/// Net sums of signed CSV rows by a key.
fn net<K: Ord>(rows: &[CsvRow], key: impl Fn(&CsvRow) -> K) -> BTreeMap<K, (i64, Quantity)> {
    let mut out: BTreeMap<K, (i64, Quantity)> = BTreeMap::new();
    for r in rows {
        let sign: i64 = num(r, "sign");
        let e = out.entry(key(r)).or_default();
        e.0 += sign * num::<i64>(r, "events");
        let q = quantity(field(r, "quantity"));
        e.1 += if sign < 0 { Quantity::ZERO - q } else { q };
    }
    out
}

impl Facts {
    /// A snapshot of the run whose output directory is `out`.
    pub fn from_output(out: &Path, catalog: &Catalog, unit: PeriodUnit) -> Result<Facts, String> {
        if !out.join("counts.json").exists() && !out.join("invoice_lines").exists() {
            return Err(format!(
                "{} holds no run output yet; start `meterflow run -o {}` (the dashboard shows it as it is written)",
                out.display(),
                out.display()
            ));
        }
        let lines = invoice_preview::from_output(out, &Default::default()).unwrap_or_default();
        let scored = scorecard::from_output(out, catalog, unit, &Default::default())?;
        let lag = scorecard::lag_from_output(out).unwrap_or_default();
        let daily = net(&rows_of(out, "usage_buckets")?, |r| {
            (
                field(r, "bucket_start").get(..10).unwrap_or("").to_string(),
                field(r, "customer_id").to_string(),
                field(r, "sku").to_string(),
            )
        })
        .into_iter()
        .map(|((day, customer_id, sku), (events, q))| Daily {
            day,
            customer_id,
            sku,
            events,
            quantity: q.to_string(),
        })
        .collect();
        let service_usage = net(&rows_of(out, "line_usage")?, |r| {
            (
                field(r, "customer_id").to_string(),
                field(r, "contract_id").to_string(),
                field(r, "sku").to_string(),
                field(r, "service_period").to_string(),
            )
        })
        .into_iter()
        .map(
            |((customer_id, contract_id, sku, service_period), (events, q))| ServiceUsage {
                customer_id,
                contract_id,
                sku,
                service_period,
                events,
                quantity: q.to_string(),
            },
        )
        .collect();
        let signals = current_rows(&rows_of(out, "entitlement_signals")?)
            .iter()
            .map(|r| StandingSignal {
                customer_id: field(r, "customer_id").into(),
                contract_id: field(r, "contract_id").into(),
                sku: field(r, "sku").into(),
                period: field(r, "period").into(),
                signal: field(r, "signal").into(),
                percent: num(r, "percent"),
                at_quantity: field(r, "at_quantity").into(),
                allowance: field(r, "allowance").into(),
            })
            .collect();
        let resolved = Quarantine {
            rejected: Vec::new(),
            resolutions: resolutions_from_output(out)?,
        }
        .resolved();
        let mut by_reason: BTreeMap<String, Rejections> = BTreeMap::new();
        for r in rows_of(out, "rejections")? {
            let e = by_reason
                .entry(field(&r, "reason").to_string())
                .or_insert_with(|| Rejections {
                    reason: field(&r, "reason").into(),
                    remediation: field(&r, "remediation").into(),
                    ..Default::default()
                });
            e.records += 1;
            let id = field(&r, "event_id");
            if id.is_empty() || !resolved.contains(id) {
                e.unresolved += 1;
            }
        }
        let mut arrivals: BTreeMap<(String, String, String, u8), u64> = BTreeMap::new();
        for r in rows_of(out, "usage_events")? {
            *arrivals
                .entry((
                    field(&r, "invoice_period").into(),
                    field(&r, "arrival").into(),
                    field(&r, "correction_action").into(),
                    num(&r, "billable"),
                ))
                .or_default() += 1;
        }
        let anomalies = current_rows(&rows_of(out, "anomalies")?)
            .iter()
            .map(anomaly_of)
            .collect();
        let (checked, drifting) = reconciliation_of(&rows_of(out, "reconciliation")?);
        let forecast = forecast_of(&rows_of(out, "forecast")?);
        let schedule = revenue::net(&crate::sinks::revenue::from_files(out)?);
        let metrics = out.join("metrics.prom");
        let telemetry = std::fs::read_to_string(&metrics)
            .ok()
            .map(|text| Telemetry::parse(&text, &metrics.display().to_string()));
        Ok(Facts {
            source: format!("output directory {}", out.display()),
            read_at: EventTime::now(),
            lines,
            scored,
            lag,
            daily,
            service_usage,
            signals,
            rejections: by_reason.into_values().collect(),
            duplicates: rows_of(out, "duplicates")?.len() as u64,
            arrivals: arrivals
                .into_iter()
                .map(
                    |((invoice_period, arrival, correction_action, billable), events)| Arrivals {
                        invoice_period,
                        arrival,
                        correction_action,
                        billable,
                        events,
                    },
                )
                .collect(),
            anomalies,
            checked,
            drifting,
            forecast,
            schedule,
            telemetry,
        })
    }

    /// A snapshot of what is in ClickHouse (up to the last commit).
    pub fn from_clickhouse(
        ch: &ClickHouse,
        catalog: &Catalog,
        unit: PeriodUnit,
    ) -> Result<Facts, String> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Dups {
            duplicates: u64,
        }
        let lines = invoice_preview::from_clickhouse(ch, &Default::default())?;
        let scored = scorecard::from_clickhouse(ch, catalog, unit, &Default::default())?;
        let lag = scorecard::lag_from_clickhouse(ch, unit)?;
        let daily = ch.fetch(
            "SELECT toString(day) AS day, customer_id, sku, events, toString(quantity) AS quantity \
             FROM {db}.v_exec_daily ORDER BY day, customer_id, sku",
        )?;
        let service_usage = ch.fetch(
            "SELECT customer_id, contract_id, sku, service_period, events, toString(quantity) AS quantity \
             FROM {db}.v_account_usage",
        )?;
        let signals = ch.fetch(
            "SELECT customer_id, contract_id, sku, period, signal, percent, \
             toString(at_quantity) AS at_quantity, toString(allowance) AS allowance \
             FROM {db}.v_account_signals",
        )?;
        let rejections = ch.fetch(
            "SELECT reason, any(remediation) AS remediation, sum(records) AS records, \
             sum(unresolved) AS unresolved FROM {db}.v_ops_rejections GROUP BY reason ORDER BY reason",
        )?;
        let duplicates: Vec<Dups> =
            ch.fetch("SELECT sum(duplicates) AS duplicates FROM {db}.v_ops_duplicates")?;
        let arrivals = ch.fetch(
            "SELECT invoice_period, arrival, correction_action, billable, events FROM {db}.v_ops_arrivals",
        )?;
        let anomalies = ch.fetch(
            "SELECT customer_id, sku, kind, \
             concat(replaceOne(toString(window_start), ' ', 'T'), '.000Z') AS window_start, \
             concat(replaceOne(toString(window_end), ' ', 'T'), '.000Z') AS window_end, \
             toString(observed) AS observed, toString(expected) AS expected, toString(score) AS score, \
             severity, explanation FROM {db}.v_ops_anomalies",
        )?;
        let checked = ch.fetch(
            "SELECT run_id, concat(replaceOne(toString(checked_at), ' ', 'T'), '.000Z') AS checked_at, \
             comparison, period, lines, drifting FROM {db}.v_exec_reconciliation \
             ORDER BY comparison, period",
        )?;
        let drifting: Vec<Drifting> = ch.fetch(
            "SELECT comparison, customer_id, contract_id, sku, region, service_period, invoice_period, \
             signal, line_type, expected_events, billed_events, \
             toString(expected_quantity) AS expected_quantity, toString(billed_quantity) AS billed_quantity, \
             currency, toString(expected_amount_exact) AS expected_amount, \
             toString(billed_amount_exact) AS billed_amount, event_ids FROM {db}.v_exec_drift",
        )?;
        Ok(Facts {
            source: format!("ClickHouse database {}", ch.database),
            read_at: EventTime::now(),
            lines,
            scored,
            lag,
            daily,
            service_usage: trimmed(service_usage),
            signals,
            rejections,
            duplicates: duplicates.first().map_or(0, |d| d.duplicates),
            arrivals,
            anomalies,
            checked,
            drifting,
            forecast: ch.fetch(
                "SELECT month, stream, currency, toString(amount) AS amount, toString(low) AS low, \
                 toString(high) AS high, concat(replaceOne(toString(as_of), ' ', 'T'), '.000Z') AS as_of \
                 FROM {db}.v_exec_forecast ORDER BY month, stream, currency",
            )?,
            schedule: crate::sinks::revenue::netted_from_clickhouse(ch)?,
            telemetry: None,
        })
    }
}

/// ClickHouse prints decimals with all their scale (`12.500000000`); the files do not.
fn trimmed(mut usage: Vec<ServiceUsage>) -> Vec<ServiceUsage> {
    for u in &mut usage {
        u.quantity = quantity(&u.quantity).to_string();
    }
    usage
}

/// What the latest reconciliation in `rows` (the `reconciliation` table) checked, per comparison
/// and period, and the lines it found drifting; as `v_exec_reconciliation` and `v_exec_drift`.
fn reconciliation_of(rows: &[CsvRow]) -> (Vec<Checked>, Vec<Drifting>) {
    let Some(latest) = rows
        .iter()
        .max_by_key(|r| field(r, "checked_at"))
        .map(|r| field(r, "run_id"))
    else {
        return Default::default();
    };
    let mut checked: BTreeMap<(&str, &str), Checked> = BTreeMap::new();
    let mut drifting = Vec::new();
    for r in rows.iter().filter(|r| field(r, "run_id") == latest) {
        let period = match field(r, "invoice_period") {
            "" => field(r, "service_period"),
            p => p,
        };
        let c = checked
            .entry((field(r, "comparison"), period))
            .or_insert_with(|| Checked {
                run_id: latest.into(),
                comparison: field(r, "comparison").into(),
                period: period.into(),
                ..Default::default()
            });
        c.checked_at = c.checked_at.clone().max(field(r, "checked_at").into());
        c.lines += 1;
        if field(r, "drift") == "1" {
            c.drifting += 1;
            drifting.push(Drifting {
                comparison: field(r, "comparison").into(),
                customer_id: field(r, "customer_id").into(),
                contract_id: field(r, "contract_id").into(),
                sku: field(r, "sku").into(),
                region: field(r, "region").into(),
                service_period: field(r, "service_period").into(),
                invoice_period: field(r, "invoice_period").into(),
                signal: field(r, "signal").into(),
                line_type: field(r, "line_type").into(),
                expected_events: num(r, "expected_events"),
                billed_events: num(r, "billed_events"),
                expected_quantity: field(r, "expected_quantity").into(),
                billed_quantity: field(r, "billed_quantity").into(),
                currency: field(r, "currency").into(),
                expected_amount: field(r, "expected_amount_exact").into(),
                billed_amount: field(r, "billed_amount_exact").into(),
                event_ids: field(r, "event_ids").into(),
            });
        }
    }
    (checked.into_values().collect(), drifting)
}

/// The forecast rows (the latest forecast) per month, stream and currency, as `v_exec_forecast`.
fn forecast_of(rows: &[CsvRow]) -> Vec<Forecasted> {
    let mut sums: BTreeMap<(String, String, String), [Amount; 3]> = BTreeMap::new();
    let mut as_of = String::new();
    for r in rows {
        let e = sums
            .entry((
                field(r, "month").into(),
                field(r, "stream").into(),
                field(r, "currency").into(),
            ))
            .or_default();
        for (i, k) in ["amount", "low", "high"].iter().enumerate() {
            e[i] += Amount::parse(field(r, k)).unwrap_or_default();
        }
        as_of = field(r, "as_of").into();
    }
    sums.into_iter()
        .map(
            |((month, stream, currency), [amount, low, high])| Forecasted {
                month,
                stream,
                currency,
                amount: amount.to_string(),
                low: low.to_string(),
                high: high.to_string(),
                as_of: as_of.clone(),
            },
        )
        .collect()
}

fn anomaly_of(r: &CsvRow) -> Anomaly {
    Anomaly {
        customer_id: field(r, "customer_id").into(),
        sku: field(r, "sku").into(),
        kind: field(r, "kind").into(),
        window_start: field(r, "window_start").into(),
        window_end: field(r, "window_end").into(),
        observed: field(r, "observed").into(),
        expected: field(r, "expected").into(),
        score: field(r, "score").into(),
        severity: field(r, "severity").into(),
        explanation: field(r, "explanation").into(),
    }
}

impl Telemetry {
    /// Reads the sink series out of Prometheus text (what `/metrics` serves).
    pub fn parse(text: &str, from: &str) -> Telemetry {
        let mut t = Telemetry {
            from: from.into(),
            ..Default::default()
        };
        let mut inserts: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |key: &str| -> String {
                labels
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().trim_end_matches('}').trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            match name {
                "meterflow_alerts_total" => t.alerts.push((label("sink"), label("outcome"), value)),
                "meterflow_clickhouse_rows_inserted_total" => {
                    inserts.entry(label("table")).or_default().0 += value
                }
                "meterflow_clickhouse_insert_retries_total" => {
                    inserts.entry(label("table")).or_default().1 += value
                }
                "meterflow_clickhouse_insert_seconds_sum" => {
                    inserts.entry(label("table")).or_default().2 += value
                }
                "meterflow_watermark_lag_seconds" => t.watermark_lag_seconds = Some(value),
                "meterflow_epochs_in_flight" => t.epochs_in_flight = Some(value),
                _ => {}
            }
        }
        t.inserts = inserts
            .into_iter()
            .map(|(table, (rows, retries, seconds))| (table, rows, retries, seconds))
            .collect();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_reads_the_sink_series_of_prometheus_text() {
        let t = Telemetry::parse(
            "# HELP x\nmeterflow_alerts_total{outcome=\"sent\",sink=\"webhook\"} 3\n\
             meterflow_clickhouse_rows_inserted_total{table=\"invoice_lines\"} 12\n\
             meterflow_clickhouse_insert_retries_total{table=\"invoice_lines\"} 2\n\
             meterflow_clickhouse_insert_seconds_sum{table=\"invoice_lines\"} 0.5\n\
             meterflow_watermark_lag_seconds 4\n",
            "test",
        );
        assert_eq!(t.alerts, vec![("webhook".into(), "sent".into(), 3.0)]);
        assert_eq!(t.inserts, vec![("invoice_lines".into(), 12.0, 2.0, 0.5)]);
        assert_eq!(t.watermark_lag_seconds, Some(4.0));
    }
}
