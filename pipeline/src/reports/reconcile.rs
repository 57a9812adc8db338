//! Reading what reconciliation compares: the accepted events and the invoice lines, from a run's
//! CSV tables (one plain pass) or from ClickHouse (plain SQL over `usage_events`), and the drift
//! table `meterflow reconcile` prints. The comparison itself is `meterflow_schemas::reconcile`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use clickhouse::Row;
use meterflow_schemas::catalog::{Catalog, PriceIdx};
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::pricing::PriceModel;
use meterflow_schemas::reconcile::{
    billed, compare, compare_signals, compare_totals, expected_signals, is_usage_signal,
    EventFacts, Expected, ExpectedMoney, LineFacts, LineRef, Money, PriceUsage, Reconciled,
    SignalRef, Tally, EVENTS_TO_LINES, EVENTS_TO_SIGNALS, EVENT_IDS, LINES_TO_TOTALS,
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

/// How lines are priced: the billing period and the rounding of a line's amount.
#[derive(Clone, Copy, Debug)]
pub struct Billing {
    pub unit: PeriodUnit,
    pub rounding: Rounding,
}

/// The price the catalog gives an accepted event now: the rate-card version effective at its
/// time for its contract, the price for its region.
fn price_now(
    catalog: &Catalog,
    contract: &str,
    sku: &str,
    region: &str,
    time: EventTime,
    event: &str,
) -> Result<PriceIdx, String> {
    let (Some(c), Some(s)) = (catalog.contract(contract), catalog.sku(sku)) else {
        return Err(format!(
            "accepted event `{event}` names contract `{contract}` or SKU `{sku}`, which the catalog does not have: pass the catalog the run used"
        ));
    };
    let region = if region.is_empty() {
        None
    } else {
        catalog.region(region)
    };
    catalog
        .price_for(&catalog.contracts[c.ix()], s, region, time)
        .map_err(|miss| {
            format!("the catalog does not price accepted event `{event}` ({miss:?}): pass the catalog the run used")
        })
}

fn line_events(correction_action: &str) -> i64 {
    match correction_action {
        "void" => -1,
        "amend" => 0,
        _ => 1,
    }
}

fn amount(text: &str, what: &str) -> Result<Amount, String> {
    Amount::parse(text).map_err(|e| format!("{what}: amount `{text}`: {e:?}"))
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
    billing: Billing,
    scope: &Scope,
) -> Result<Vec<Reconciled>, String> {
    let read = |t: &tables::Table| {
        read_table(out, t.name)
            .map_err(|e| format!("cannot read {}/{}: {e}", out.display(), t.name))
    };
    let mut expected = Expected::default();
    let mut money = ExpectedMoney::default();
    for r in read(&tables::USAGE_EVENTS)? {
        let event_id = field(&r, "event_id").to_string();
        let time = EventTime::parse_rfc3339(field(&r, "event_time"))
            .map_err(|e| format!("usage_events {event_id}: event_time: {e}"))?;
        let q = quantity(field(&r, "quantity"), &event_id)?;
        let line = line_ref(&r, "price_region");
        let billable = field(&r, "billable") == "1";
        if billable && is_additive(catalog, &line.sku) {
            let price = price_now(
                catalog,
                &line.contract_id,
                &line.sku,
                field(&r, "region"),
                time,
                &event_id,
            )?;
            let events = line_events(field(&r, "correction_action"));
            let usage = PriceUsage::of_event(catalog, price, events, q);
            money.add(billing.unit, &line, price, usage);
        }
        expected.add(
            catalog,
            EventFacts {
                quantity: q,
                line,
                time,
                billable,
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
            money: Money {
                exact: amount(field(&r, "amount_exact"), what)?,
                billed: amount(field(&r, "amount"), what)?,
            },
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
        billing,
        scope,
        (expected, money),
        lines,
        active,
    ))
}

fn is_additive(catalog: &Catalog, sku: &str) -> bool {
    catalog
        .sku(sku)
        .is_some_and(|s| catalog.skus[s.ix()].aggregation.is_additive())
}

/// The three comparisons, in scope: lines, signals, then invoice-level lines and totals.
/// `invoice_lines`: the rows of `invoice_lines` (any line type).
fn finish(
    catalog: &Catalog,
    billing: Billing,
    scope: &Scope,
    (expected, money): (Expected, ExpectedMoney),
    invoice_lines: Vec<LineFacts>,
    active: BTreeSet<SignalRef>,
) -> Vec<Reconciled> {
    let lines = expected.lines(catalog);
    let signals = expected_signals(catalog, billing.unit, &lines);
    let money = money.lines(catalog, billing.unit, billing.rounding);
    let billed = billed(catalog, invoice_lines.iter().cloned());
    let totals = compare_totals(
        catalog,
        billing.unit,
        billing.rounding,
        &money,
        invoice_lines,
    );
    let mut checked = compare(catalog, lines, money, billed);
    checked.extend(compare_signals(signals, active));
    checked.extend(totals);
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

/// Billable events of additive meters summed per line, event region and span of time between
/// rate-card version changes: one price applies to each such group.
#[derive(Row, Deserialize)]
struct UsageSums {
    customer_id: String,
    contract_id: String,
    sku: String,
    price_region: String,
    service_period: String,
    invoice_period: String,
    region: String,
    #[allow(dead_code)]
    span: u32,
    at: i64,
    events: i64,
    quantity: String,
}

/// The signed sums of a line's invoice line rows.
#[derive(Row, Deserialize)]
struct LineSums {
    customer_id: String,
    contract_id: String,
    line_type: String,
    sku: String,
    region: String,
    service_period: String,
    invoice_period: String,
    events: i64,
    quantity: String,
    amount: String,
    amount_exact: String,
}

fn line_of(
    customer_id: &str,
    contract_id: &str,
    sku: &str,
    region: &str,
    service_period: &str,
    invoice_period: &str,
) -> LineRef {
    LineRef {
        customer_id: customer_id.into(),
        contract_id: contract_id.into(),
        sku: sku.into(),
        region: region.into(),
        service_period: service_period.into(),
        invoice_period: invoice_period.into(),
    }
}

/// One event read whole: readings of non-additive meters, and events of prices with
/// per-transaction fee limits (their fee depends on each transaction's size).
#[derive(Row, Deserialize)]
struct EventRow {
    event_id: String,
    customer_id: String,
    contract_id: String,
    sku: String,
    price_region: String,
    service_period: String,
    invoice_period: String,
    region: String,
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
/// not committed yet are not compared). Additive meters are summed by ClickHouse, per price
/// (between two rate-card version changes, one price applies); the readings of the other meters,
/// and the events of prices with per-transaction fee limits, are read one by one and judged as
/// for files.
pub fn from_clickhouse(
    ch: &ClickHouse,
    catalog: &Catalog,
    billing: Billing,
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
    let limited = |s: &&meterflow_schemas::catalog::Sku| {
        catalog.prices.iter().any(|p| {
            catalog.skus[p.sku.ix()].id == s.id
                && matches!(&p.model, PriceModel::Percentage(m) if m.has_limits())
        })
    };
    let (summed, one_by_one): (Vec<_>, Vec<_>) = catalog
        .skus
        .iter()
        .partition(|s| s.aggregation.is_additive() && !limited(s));
    let summed_skus = in_list(summed.iter().map(|s| s.id.as_str()));
    let one_by_one_skus = in_list(one_by_one.iter().map(|s| s.id.as_str()));
    let mut changes: Vec<i64> = catalog
        .rate_cards
        .iter()
        .flat_map(|c| c.versions.iter().map(|v| v.effective_from.0))
        .collect();
    changes.sort_unstable();
    changes.dedup();
    let span = if changes.is_empty() {
        "toUInt32(0)".to_string()
    } else {
        let list: Vec<String> = changes.iter().map(|t| format!("toInt64({t})")).collect();
        format!(
            "toUInt32(arrayCount(b -> event_time_ms >= b, [{}]))",
            list.join(", ")
        )
    };
    let key = "customer_id, contract_id, sku, price_region, service_period, invoice_period";
    let events = "multiIf(correction_action = 'void', -1, correction_action = 'amend', 0, 1)";
    let sums: Vec<UsageSums> = ch.fetch(&format!(
        "SELECT {key}, region, {span} AS span, min(event_time_ms) AS at, \
         toInt64(sum({events})) AS events, toString(sum(quantity)) AS quantity \
         FROM {{db}}.usage_events WHERE billable = 1 AND sku IN {summed_skus} AND {filter} \
         GROUP BY {key}, region, span"
    ))?;
    let one_by_one: Vec<EventRow> = ch.fetch(&format!(
        "SELECT event_id, {key}, region, toString(quantity) AS quantity, event_time_ms, billable, \
         correction_action, correction_of, attributes \
         FROM {{db}}.usage_events WHERE billable = 1 AND sku IN {one_by_one_skus} AND {filter}"
    ))?;
    let lines: Vec<LineSums> = ch.fetch(&format!(
        "SELECT customer_id, contract_id, line_type, sku, region, service_period, invoice_period, \
         toInt64(sum(events * sign)) AS events, \
         toString(sumIf(quantity, sign > 0) - sumIf(quantity, sign < 0)) AS quantity, \
         toString(sumIf(amount, sign > 0) - sumIf(amount, sign < 0)) AS amount, \
         toString(sumIf(amount_exact, sign > 0) - sumIf(amount_exact, sign < 0)) AS amount_exact \
         FROM {{db}}.invoice_lines WHERE {filter} \
         GROUP BY customer_id, contract_id, line_type, sku, region, service_period, invoice_period"
    ))?;
    let mut expected = Expected::default();
    let mut money = ExpectedMoney::default();
    for r in one_by_one {
        let line = line_of(
            &r.customer_id,
            &r.contract_id,
            &r.sku,
            &r.price_region,
            &r.service_period,
            &r.invoice_period,
        );
        let q = quantity(&r.quantity, &r.event_id)?;
        let time = EventTime(r.event_time_ms);
        if is_additive(catalog, &r.sku) {
            let price = price_now(
                catalog,
                &r.contract_id,
                &r.sku,
                &r.region,
                time,
                &r.event_id,
            )?;
            let usage = PriceUsage::of_event(catalog, price, line_events(&r.correction_action), q);
            money.add(billing.unit, &line, price, usage);
        }
        expected.add(
            catalog,
            EventFacts {
                line,
                quantity: q,
                time,
                billable: r.billable == 1,
                correction_action: r.correction_action,
                correction_of: r.correction_of,
                attributes: r.attributes,
                event_id: r.event_id,
            },
        );
    }
    for s in &sums {
        let line = line_of(
            &s.customer_id,
            &s.contract_id,
            &s.sku,
            &s.price_region,
            &s.service_period,
            &s.invoice_period,
        );
        let summed = Tally {
            events: s.events,
            quantity: quantity(&s.quantity, "usage_events")?,
        };
        let what = format!("of {} at {}", s.customer_id, EventTime(s.at));
        let price = price_now(
            catalog,
            &s.contract_id,
            &s.sku,
            &s.region,
            EventTime(s.at),
            &what,
        )?;
        let usage = PriceUsage::of_event(catalog, price, summed.events, summed.quantity);
        money.add(billing.unit, &line, price, usage);
        expected.add_summed(line, summed);
    }
    let billed_lines = lines
        .iter()
        .map(|l| {
            Ok(LineFacts {
                line: line_of(
                    &l.customer_id,
                    &l.contract_id,
                    &l.sku,
                    &l.region,
                    &l.service_period,
                    &l.invoice_period,
                ),
                line_type: l.line_type.clone(),
                events: l.events,
                quantity: quantity(&l.quantity, "invoice_lines")?,
                money: Money {
                    exact: amount(&l.amount_exact, "invoice_lines")?,
                    billed: amount(&l.amount, "invoice_lines")?,
                },
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
    let mut checked = finish(
        catalog,
        billing,
        scope,
        (expected, money),
        billed_lines,
        active,
    );
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
    let of =
        |check: &str| -> Vec<&Reconciled> { checked.iter().filter(|c| c.check == check).collect() };
    let (lines, signals, totals) = (
        of(EVENTS_TO_LINES),
        of(EVENTS_TO_SIGNALS),
        of(LINES_TO_TOTALS),
    );
    let invoices = totals.iter().filter(|c| c.line_type == "total").count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "events ↔ invoice lines: {} lines checked (quantity, events and money per customer, contract, SKU, region and period)",
        lines.len()
    );
    let _ = writeln!(
        s,
        "events ↔ entitlements: {} threshold and limit signals checked",
        signals.len()
    );
    let _ = writeln!(
        s,
        "invoice lines ↔ totals: {} invoice-level lines (fees, discounts, true-ups, caps, credits, tax) and {invoices} invoices' subtotal, tax and total checked",
        totals.len() - 3 * invoices
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
        let money = match c.expected_money.filter(|_| c.money_drifts()) {
            Some(m) => {
                let digits = minor_unit_digits(&c.currency);
                let show = |a: Amount| format!("{} {}", a.format_fixed(digits), c.currency);
                let exact = if m.billed == c.billed_money.billed {
                    format!(" (exact {} against {})", m.exact, c.billed_money.exact)
                } else {
                    String::new()
                };
                format!(
                    "; amount expected {}, billed {}, difference {}{exact}",
                    show(m.billed),
                    show(c.billed_money.billed),
                    show(m.billed - c.billed_money.billed)
                )
            }
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "  line {} / {} / {} / {} / {}: expected {} ({} events), billed {} ({} events), difference {} ({} events){money}; events: {}",
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
    for c in totals.iter().filter(|c| c.drifts()) {
        let l = &c.line;
        let digits = minor_unit_digits(&c.currency);
        let show = |a: Amount| format!("{} {}", a.format_fixed(digits), c.currency);
        let expected = c.expected_money.unwrap_or_default().billed;
        let what = if l.contract_id.is_empty() {
            format!(
                "invoice {} / {} {}",
                l.customer_id, l.invoice_period, c.line_type
            )
        } else {
            let sku = if l.sku.is_empty() {
                "(invoice)"
            } else {
                &l.sku
            };
            format!(
                "{} line {} / {} / {} / {}",
                c.line_type, l.customer_id, l.contract_id, sku, l.invoice_period
            )
        };
        let _ = writeln!(
            s,
            "  {what}: expected {} from the invoice's usage lines, billed {}, difference {}",
            show(expected),
            show(c.billed_money.billed),
            show(expected - c.billed_money.billed)
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
