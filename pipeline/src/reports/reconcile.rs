//! Reading what reconciliation compares: the accepted events and the invoice lines, from a run's
//! CSV tables (one plain pass) or from ClickHouse (plain SQL over `usage_events`), and the drift
//! table `meterflow reconcile` prints. The comparison itself is `meterflow_schemas::reconcile`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use clickhouse::Row;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::Quantity;
use meterflow_schemas::reconcile::{
    billed, compare, compare_signals, expected_signals, is_usage_signal, EventFacts, Expected,
    LineFacts, LineRef, Reconciled, SignalRef, Tally, EVENTS_TO_LINES, EVENT_IDS,
};
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::Deserialize;

use crate::reports::tables::{current_rows, read_table, Row as CsvRow};
use crate::sinks::clickhouse::client::ClickHouse;

/// Which lines to check.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub customer: Option<String>,
    /// An invoice period label; a non-additive line is checked when its service period is it.
    pub period: Option<String>,
}

impl Scope {
    fn keeps(&self, l: &LineRef) -> bool {
        self.customer.as_ref().is_none_or(|c| *c == l.customer_id)
            && self.period.as_ref().is_none_or(|p| {
                *p == l.invoice_period || (l.invoice_period.is_empty() && *p == l.service_period)
            })
    }
}

fn quantity(text: &str, what: &str) -> Result<Quantity, String> {
    Quantity::parse(text).map_err(|e| format!("{what}: quantity `{text}`: {e:?}"))
}

fn field<'r>(r: &'r CsvRow, name: &str) -> &'r str {
    r.get(name).map_or("", |s| s.as_str())
}

/// Reconciles a run's CSV tables under `out`.
pub fn from_output(
    out: &Path,
    catalog: &Catalog,
    unit: PeriodUnit,
    scope: &Scope,
) -> Result<Vec<Reconciled>, String> {
    let read = |t: &tables::Table| {
        read_table(out, t.name)
            .map_err(|e| format!("cannot read {}/{}: {e}", out.display(), t.name))
    };
    let mut expected = Expected::default();
    for r in read(&tables::USAGE_EVENTS)? {
        let event_id = field(&r, "event_id").to_string();
        let time = EventTime::parse_rfc3339(field(&r, "event_time"))
            .map_err(|e| format!("usage_events {event_id}: event_time: {e}"))?;
        expected.add(
            catalog,
            EventFacts {
                quantity: quantity(field(&r, "quantity"), &event_id)?,
                line: line_ref(&r, "price_region"),
                time,
                billable: field(&r, "billable") == "1",
                correction_action: field(&r, "correction_action").into(),
                correction_of: field(&r, "correction_of").into(),
                attributes: field(&r, "attributes").into(),
                event_id,
            },
        );
    }
    let mut lines = Vec::new();
    for r in read(&tables::INVOICE_LINES)? {
        let what = "invoice_lines";
        lines.push(LineFacts {
            line: line_ref(&r, "region"),
            line_type: field(&r, "line_type").into(),
            events: field(&r, "events")
                .parse()
                .map_err(|e| format!("{what}: events: {e}"))?,
            quantity: quantity(field(&r, "quantity"), what)?,
            sign: field(&r, "sign")
                .parse()
                .map_err(|e| format!("{what}: sign: {e}"))?,
        });
    }
    let mut active = BTreeSet::new();
    for r in current_rows(&read(&tables::ENTITLEMENT_SIGNALS)?) {
        if is_usage_signal(field(&r, "signal")) {
            active.insert(SignalRef {
                customer_id: field(&r, "customer_id").into(),
                contract_id: field(&r, "contract_id").into(),
                sku: field(&r, "sku").into(),
                period: field(&r, "period").into(),
                signal: field(&r, "signal").into(),
                percent: field(&r, "percent").parse().unwrap_or(0),
            });
        }
    }
    Ok(finish(
        catalog,
        unit,
        scope,
        expected.lines(catalog),
        billed(catalog, lines),
        active,
    ))
}

/// Both comparisons, in scope: lines, then signals.
fn finish(
    catalog: &Catalog,
    unit: PeriodUnit,
    scope: &Scope,
    lines: BTreeMap<LineRef, (Tally, Vec<String>)>,
    billed: BTreeMap<LineRef, Tally>,
    active: BTreeSet<SignalRef>,
) -> Vec<Reconciled> {
    let signals = expected_signals(catalog, unit, &lines);
    let mut checked = compare(lines, billed);
    checked.extend(compare_signals(signals, active));
    checked.retain(|c| scope.keeps(&c.line));
    checked
}

fn line_ref(r: &CsvRow, region: &str) -> LineRef {
    LineRef {
        customer_id: field(r, "customer_id").into(),
        contract_id: field(r, "contract_id").into(),
        sku: field(r, "sku").into(),
        region: field(r, region).into(),
        service_period: field(r, "service_period").into(),
        invoice_period: field(r, "invoice_period").into(),
    }
}

#[derive(Row, Deserialize)]
struct LineSums {
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    invoice_period: String,
    events: i64,
    quantity: String,
}

impl LineSums {
    fn line(&self) -> LineRef {
        LineRef {
            customer_id: self.customer_id.clone(),
            contract_id: self.contract_id.clone(),
            sku: self.sku.clone(),
            region: self.region.clone(),
            service_period: self.service_period.clone(),
            invoice_period: self.invoice_period.clone(),
        }
    }
}

#[derive(Row, Deserialize)]
struct ReadingRow {
    event_id: String,
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    invoice_period: String,
    quantity: String,
    event_time_ms: i64,
    billable: u8,
    correction_action: String,
    correction_of: String,
    attributes: String,
}

#[derive(Row, Deserialize)]
struct SignalRow {
    customer_id: String,
    contract_id: String,
    sku: String,
    period: String,
    signal: String,
    percent: u32,
    #[allow(dead_code)]
    n: i64,
}

#[derive(Row, Deserialize)]
struct Committed {
    epoch: u64,
}

#[derive(Row, Deserialize)]
struct EventId {
    event_id: String,
}

/// SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn in_list<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = values.map(quote).collect();
    if v.is_empty() {
        "('')".into()
    } else {
        format!("({})", v.join(", "))
    }
}

/// Reconciles what ClickHouse holds up to the last commit (rows of epochs a running pipeline has
/// not committed yet are not compared). Additive meters are summed by ClickHouse; the readings
/// of the other meters are read and judged as for files.
pub fn from_clickhouse(
    ch: &ClickHouse,
    catalog: &Catalog,
    unit: PeriodUnit,
    scope: &Scope,
) -> Result<Vec<Reconciled>, String> {
    let committed: Vec<Committed> = ch.fetch(
        "SELECT epoch FROM {db}.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1",
    )?;
    let Some(upto) = committed.first().map(|c| c.epoch) else {
        return Ok(Vec::new());
    };
    let mut filter = format!("epoch <= {upto}");
    if let Some(c) = &scope.customer {
        let _ = write!(filter, " AND customer_id = {}", quote(c));
    }
    let (additive, other): (Vec<_>, Vec<_>) = catalog
        .skus
        .iter()
        .partition(|s| s.aggregation.is_additive());
    let additive_skus = in_list(additive.iter().map(|s| s.id.as_str()));
    let other_skus = in_list(other.iter().map(|s| s.id.as_str()));
    let key =
        "customer_id, contract_id, sku, price_region AS region, service_period, invoice_period";
    let sums: Vec<LineSums> = ch.fetch(&format!(
        "SELECT {key}, \
         toInt64(sum(multiIf(correction_action = 'void', -1, correction_action = 'amend', 0, 1))) AS events, \
         toString(sum(quantity)) AS quantity \
         FROM {{db}}.usage_events WHERE billable = 1 AND sku IN {additive_skus} AND {filter} \
         GROUP BY customer_id, contract_id, sku, region, service_period, invoice_period"
    ))?;
    let readings: Vec<ReadingRow> = ch.fetch(&format!(
        "SELECT event_id, {key}, toString(quantity) AS quantity, event_time_ms, billable, \
         correction_action, correction_of, attributes \
         FROM {{db}}.usage_events WHERE billable = 1 AND sku IN {other_skus} AND {filter}"
    ))?;
    let lines: Vec<LineSums> = ch.fetch(&format!(
        "SELECT customer_id, contract_id, sku, region, service_period, invoice_period, \
         toInt64(sum(events * sign)) AS events, \
         toString(sumIf(quantity, sign > 0) - sumIf(quantity, sign < 0)) AS quantity \
         FROM {{db}}.invoice_lines WHERE line_type IN ('usage', 'adjustment') AND {filter} \
         GROUP BY customer_id, contract_id, sku, region, service_period, invoice_period"
    ))?;
    let mut expected = Expected::default();
    for r in readings {
        expected.add(
            catalog,
            EventFacts {
                line: LineRef {
                    customer_id: r.customer_id,
                    contract_id: r.contract_id,
                    sku: r.sku,
                    region: r.region,
                    service_period: r.service_period,
                    invoice_period: r.invoice_period,
                },
                quantity: quantity(&r.quantity, &r.event_id)?,
                time: EventTime(r.event_time_ms),
                billable: r.billable == 1,
                correction_action: r.correction_action,
                correction_of: r.correction_of,
                attributes: r.attributes,
                event_id: r.event_id,
            },
        );
    }
    for s in &sums {
        let summed = Tally {
            events: s.events,
            quantity: quantity(&s.quantity, "usage_events")?,
        };
        expected.add_summed(s.line(), summed);
    }
    let lines_expected = expected.lines(catalog);
    let billed_lines = lines
        .iter()
        .map(|l| {
            Ok(LineFacts {
                line: l.line(),
                line_type: "usage".into(),
                events: l.events,
                quantity: quantity(&l.quantity, "invoice_lines")?,
                sign: 1,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let signals: Vec<SignalRow> = ch.fetch(&format!(
        "SELECT customer_id, contract_id, sku, period, signal, percent, sum(sign) AS n \
         FROM {{db}}.entitlement_signals WHERE signal IN ('threshold', 'soft_limit', 'hard_limit') AND {filter} \
         GROUP BY customer_id, contract_id, sku, period, signal, percent HAVING n > 0"
    ))?;
    let active = signals
        .into_iter()
        .map(|r| SignalRef {
            customer_id: r.customer_id,
            contract_id: r.contract_id,
            sku: r.sku,
            period: r.period,
            signal: r.signal,
            percent: r.percent,
        })
        .collect();
    let billed_lines = billed(catalog, billed_lines);
    let mut checked = finish(catalog, unit, scope, lines_expected, billed_lines, active);
    // The events behind each drifting additive line (the readings' are known already).
    for c in checked
        .iter_mut()
        .filter(|c| c.drifts() && c.event_ids.is_empty())
    {
        let l = &c.line;
        let mut cond = format!(
            "customer_id = {} AND contract_id = {} AND sku = {} AND price_region = {} AND service_period = {}",
            quote(&l.customer_id),
            quote(&l.contract_id),
            quote(&l.sku),
            quote(&l.region),
            quote(&l.service_period)
        );
        if !l.invoice_period.is_empty() {
            let _ = write!(cond, " AND invoice_period = {}", quote(&l.invoice_period));
        }
        let ids: Vec<EventId> = ch.fetch(&format!(
            "SELECT event_id FROM {{db}}.usage_events WHERE {cond} AND epoch <= {upto} ORDER BY event_id LIMIT {EVENT_IDS}"
        ))?;
        c.event_ids = ids.into_iter().map(|i| i.event_id).collect();
    }
    Ok(checked)
}

/// The drift table: one row per drifting line or signal, with the difference and the events
/// behind it.
pub fn render(checked: &[Reconciled]) -> String {
    let (lines, signals): (Vec<&Reconciled>, Vec<&Reconciled>) =
        checked.iter().partition(|c| c.check == EVENTS_TO_LINES);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "events ↔ invoice lines: {} lines checked (quantity and events per customer, contract, SKU, region and period)",
        lines.len()
    );
    let _ = writeln!(
        s,
        "events ↔ entitlements: {} threshold and limit signals checked",
        signals.len()
    );
    let drifting = checked.iter().filter(|c| c.drifts()).count();
    if drifting == 0 {
        let _ = writeln!(s, "no drift");
        return s;
    }
    let _ = writeln!(s, "DRIFT in {drifting} of {}:", checked.len());
    for c in lines.iter().filter(|c| c.drifts()) {
        let l = &c.line;
        let period = if l.invoice_period.is_empty() {
            format!("service {}", l.service_period)
        } else {
            format!("service {} invoice {}", l.service_period, l.invoice_period)
        };
        let region = if l.region.is_empty() { "*" } else { &l.region };
        let _ = writeln!(
            s,
            "  line {} / {} / {} / {} / {}: expected {} ({} events), billed {} ({} events), difference {} ({} events); events: {}",
            l.customer_id,
            l.contract_id,
            l.sku,
            region,
            period,
            c.expected.quantity,
            c.expected.events,
            c.billed.quantity,
            c.billed.events,
            c.expected.quantity - c.billed.quantity,
            c.expected.events - c.billed.events,
            if c.event_ids.is_empty() {
                "none".to_string()
            } else {
                c.event_ids.join(" ")
            }
        );
    }
    for c in signals.iter().filter(|c| c.drifts()) {
        let l = &c.line;
        let (want, have) = if c.expected.events > 0 {
            ("called for by the usage", "not active")
        } else {
            ("not called for by the usage", "active")
        };
        let _ = writeln!(
            s,
            "  signal {} / {} / {} / {} {}: {want} ({} in the period), {have} in entitlement_signals",
            l.customer_id, l.contract_id, l.sku, l.service_period, c.signal, c.expected.quantity,
        );
    }
    s
}
