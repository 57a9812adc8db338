//! Reading what the leak scorecard counts — accepted usage, rejections, duplicates and invoice
//! lines — from a run's CSV tables (one plain pass) or from ClickHouse (SQL sums up to the last
//! commit), and the report `meterflow scorecard` prints. The arithmetic is
//! `meterflow_schemas::scorecard`; docs/scorecard.md defines every number.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use clickhouse::Row;
use meterflow_schemas::catalog::{Aggregation, Catalog};
use meterflow_schemas::lag::{
    merge_into, rows as lag_rows, LagSummary, Lagged, PartitionLag, STAGES,
};
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::scorecard::{
    cause, percent, Counted, IssuedLine, Key, Scorecard, Scored, ALL, CAPTURE, INVOICE_ERROR,
};
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, PeriodUnit};
use serde::Deserialize;

use crate::reports::tables::{read_table, Row as CsvRow};
use crate::sinks::clickhouse::client::{sql_string, ClickHouse};

/// Which keys to count.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub customer: Option<String>,
    pub period: Option<String>,
}

impl Scope {
    fn keeps(&self, k: &Key) -> bool {
        self.customer.as_ref().is_none_or(|c| *c == k.customer_id)
            && self.period.as_ref().is_none_or(|p| *p == k.period)
    }
}

/// How a SKU's usage counts in units: `sum` meters their quantity, `count` meters their events;
/// the other meters (peaks, latest readings, distinct counts) have no additive units.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Units {
    Quantity,
    Events,
    None,
}

fn units(catalog: &Catalog, sku: &str) -> Units {
    match catalog.sku(sku).map(|s| catalog.skus[s.ix()].aggregation) {
        None | Some(Aggregation::Sum) => Units::Quantity,
        Some(Aggregation::Count) => Units::Events,
        Some(_) => Units::None,
    }
}

fn counted(u: Units, events: i64, quantity: Quantity) -> Counted {
    let quantity = match u {
        Units::Quantity => quantity,
        Units::Events => Quantity::from_units(events),
        Units::None => Quantity::ZERO,
    };
    Counted::events(events, quantity)
}

/// Events as invoice lines count them: an amend adds none, a void takes its original back.
fn line_events(correction_action: &str) -> i64 {
    match correction_action {
        "void" => -1,
        "amend" => 0,
        _ => 1,
    }
}

/// What a rejected payload still says about itself: customer, SKU, quantity and period (empty
/// when it does not say; the quantity only when it is a positive number).
fn rejected_key(raw: &str, unit: PeriodUnit) -> (Key, Option<Quantity>) {
    let v: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
    let data = v.get("data").filter(|d| d.is_object());
    let text = |names: &[&str]| -> String {
        names
            .iter()
            .find_map(|n| {
                data.and_then(|d| d.get(*n))
                    .or_else(|| v.get(*n))
                    .and_then(|x| x.as_str())
            })
            .unwrap_or_default()
            .to_string()
    };
    let customer = text(&["customer_id", "subject"]);
    let sku = text(&["sku"]);
    let period = EventTime::parse_rfc3339(&text(&["timestamp", "time"]))
        .map(|t| unit.label(unit.period_of(t)))
        .unwrap_or_default();
    let quantity = data
        .and_then(|d| d.get("quantity"))
        .or_else(|| v.get("quantity"))
        .and_then(|q| match q {
            serde_json::Value::String(s) => Quantity::parse(s).ok(),
            serde_json::Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
            _ => None,
        })
        .filter(|q| *q > Quantity::ZERO);
    (Key::new(&period, &customer, &sku), quantity)
}

fn add_rejection(s: &mut Scorecard, catalog: &Catalog, unit: PeriodUnit, reason: &str, raw: &str) {
    let (key, quantity) = rejected_key(raw, unit);
    let u = units(catalog, &key.sku);
    let c = counted(u, 1, quantity.unwrap_or_default());
    if u == Units::None {
        s.priced_per_event(key.clone());
    }
    s.rejected(key, reason, c);
}

/// Whether a rejected record counts: every record without an event id, and the first of each
/// id not in `seen` (a fix rejected again is the same usage, not more of it; a resolved
/// one is accepted usage now).
fn once(seen: &mut BTreeSet<String>, event_id: &str) -> bool {
    event_id.is_empty() || seen.insert(event_id.to_string())
}

fn field<'r>(r: &'r CsvRow, name: &str) -> &'r str {
    r.get(name).map_or("", |s| s.as_str())
}

fn parse<T: std::str::FromStr>(r: &CsvRow, name: &str, table: &str) -> Result<T, String> {
    field(r, name)
        .parse()
        .map_err(|_| format!("{table}: {name} `{}` is not a number", field(r, name)))
}

fn decimal<T>(
    text: &str,
    what: &str,
    p: impl Fn(&str) -> Result<T, meterflow_schemas::money::DecimalError>,
) -> Result<T, String> {
    p(text).map_err(|e| format!("{what}: `{text}`: {e}"))
}

fn issued_line(r: &CsvRow, region: &str) -> IssuedLine {
    IssuedLine {
        customer_id: field(r, "customer_id").into(),
        contract_id: field(r, "contract_id").into(),
        sku: field(r, "sku").into(),
        region: field(r, region).into(),
        service_period: field(r, "service_period").into(),
    }
}

/// Counts a run's CSV tables under `out`.
pub fn from_output(
    out: &Path,
    catalog: &Catalog,
    unit: PeriodUnit,
    scope: &Scope,
) -> Result<Vec<Scored>, String> {
    let read = |t: &tables::Table| {
        read_table(out, t.name)
            .map_err(|e| format!("cannot read {}/{}: {e}", out.display(), t.name))
    };
    let mut s = Scorecard::default();
    let duplicates = read(&tables::DUPLICATES)?;
    let retried: HashSet<&str> = duplicates.iter().map(|r| field(r, "event_id")).collect();
    let mut originals: HashMap<String, Key> = HashMap::new();
    for r in read(&tables::USAGE_EVENTS)? {
        let sku = field(&r, "sku");
        let key = Key::new(field(&r, "invoice_period"), field(&r, "customer_id"), sku);
        let action = field(&r, "correction_action");
        let quantity = decimal(
            field(&r, "quantity"),
            "usage_events: quantity",
            Quantity::parse,
        )?;
        let u = units(catalog, sku);
        if u == Units::None {
            s.priced_per_event(key.clone());
        }
        let billable = field(&r, "billable") == "1";
        if billable && key.period != field(&r, "service_period") {
            s.billed_later(issued_line(&r, "price_region"), !action.is_empty());
        }
        if retried.contains(field(&r, "event_id")) {
            originals.insert(field(&r, "event_id").into(), key.clone());
        }
        s.accepted(
            key,
            billable,
            true,
            counted(u, line_events(action), quantity),
        );
    }
    // A rejection a replayed fix resolved is not a gap: its usage is accepted now.
    let mut seen = crate::reports::quarantine::from_output(out)?.resolved();
    for r in read(&tables::REJECTIONS)? {
        if !once(&mut seen, field(&r, "event_id")) {
            continue;
        }
        add_rejection(
            &mut s,
            catalog,
            unit,
            field(&r, "reason"),
            field(&r, "raw_payload"),
        );
    }
    for r in &duplicates {
        let key = originals
            .get(field(r, "event_id"))
            .cloned()
            .unwrap_or_default();
        s.duplicates(key, 1);
    }
    let mut lines: BTreeMap<(Key, IssuedLine, String, String), (Counted, i64)> = BTreeMap::new();
    for r in read(&tables::INVOICE_LINES)? {
        let what = "invoice_lines";
        let sign: i64 = parse(&r, "sign", what)?;
        let events: i64 = parse(&r, "events", what)?;
        let quantity = decimal(
            field(&r, "quantity"),
            "invoice_lines: quantity",
            Quantity::parse,
        )?;
        let amount = decimal(field(&r, "amount"), "invoice_lines: amount", Amount::parse)?;
        let key = Key::new(
            field(&r, "invoice_period"),
            field(&r, "customer_id"),
            field(&r, "sku"),
        );
        let entry = lines
            .entry((
                key,
                issued_line(&r, "region"),
                field(&r, "line_type").to_string(),
                field(&r, "currency").to_string(),
            ))
            .or_default();
        entry.0 += Counted {
            events: events * sign,
            quantity: Quantity(quantity.0 * sign as i128),
            amount: Amount(amount.0 * sign as i128),
        };
        entry.1 += sign;
    }
    // Lines with a current state (a line retracted for good bills nothing).
    for ((key, line, line_type, currency), (c, _)) in lines.into_iter().filter(|(_, (_, n))| *n > 0)
    {
        let c = Counted {
            amount: c.amount,
            ..counted(units(catalog, &key.sku), c.events, c.quantity)
        };
        s.line(key, line, &line_type, &currency, c);
    }
    Ok(s.rows(|k| scope.keeps(k)))
}

#[derive(Row, Deserialize)]
struct Usage {
    period: String,
    customer_id: String,
    sku: String,
    billable: u8,
    committed: u8,
    events: i64,
    quantity: String,
}

#[derive(Row, Deserialize)]
struct Later {
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    correction: u8,
}

impl Later {
    fn line(self) -> IssuedLine {
        IssuedLine {
            customer_id: self.customer_id,
            contract_id: self.contract_id,
            sku: self.sku,
            region: self.region,
            service_period: self.service_period,
        }
    }
}

#[derive(Row, Deserialize)]
struct Rejected {
    event_id: String,
    reason: String,
    raw_payload: String,
}

#[derive(Row, Deserialize)]
struct Retried {
    period: String,
    customer_id: String,
    sku: String,
    events: i64,
}

#[derive(Row, Deserialize)]
struct LineSums {
    invoice_period: String,
    customer_id: String,
    contract_id: String,
    sku: String,
    region: String,
    service_period: String,
    line_type: String,
    currency: String,
    events: i64,
    quantity: String,
    amount: String,
}

#[derive(Row, Deserialize)]
struct Committed {
    epoch: u64,
}

/// Counts what ClickHouse holds; accepted usage beyond the last commit counts as uncommitted.
pub fn from_clickhouse(
    ch: &ClickHouse,
    catalog: &Catalog,
    unit: PeriodUnit,
    scope: &Scope,
) -> Result<Vec<Scored>, String> {
    let committed: Vec<Committed> = ch.fetch(
        "SELECT epoch FROM {db}.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1",
    )?;
    let upto = committed.first().map_or(-1, |c| c.epoch as i128);
    let customer = scope.customer.as_ref().map_or(String::new(), |c| {
        format!(" AND customer_id = '{}'", sql_string(c))
    });
    let events = "multiIf(correction_action = 'void', -1, correction_action = 'amend', 0, 1)";
    let mut s = Scorecard::default();
    let usage: Vec<Usage> = ch.fetch(&format!(
        "SELECT invoice_period AS period, customer_id, sku, billable, toUInt8(epoch <= {upto}) AS committed, \
         toInt64(sum({events})) AS events, toString(sum(quantity)) AS quantity \
         FROM {{db}}.usage_events WHERE 1{customer} \
         GROUP BY period, customer_id, sku, billable, committed"
    ))?;
    for r in usage {
        let key = Key::new(&r.period, &r.customer_id, &r.sku);
        let u = units(catalog, &r.sku);
        if u == Units::None {
            s.priced_per_event(key.clone());
        }
        let quantity = decimal(&r.quantity, "usage_events: quantity", Quantity::parse)?;
        s.accepted(
            key,
            r.billable == 1,
            r.committed == 1,
            counted(u, r.events, quantity),
        );
    }
    let later: Vec<Later> = ch.fetch(&format!(
        "SELECT DISTINCT customer_id, contract_id, sku, price_region AS region, service_period, \
         toUInt8(correction_action != '') AS correction \
         FROM {{db}}.usage_events WHERE billable = 1 AND invoice_period != service_period AND epoch <= {upto}{customer}"
    ))?;
    for r in later {
        let correction = r.correction == 1;
        s.billed_later(r.line(), correction);
    }
    // A rejection a replayed fix resolved is not a gap: its usage is accepted now.
    let rejected: Vec<Rejected> = ch.fetch(&format!(
        "SELECT event_id, reason, raw_payload FROM {{db}}.rejections WHERE epoch <= {upto} \
         AND event_id NOT IN (SELECT event_id FROM {{db}}.quarantine_resolutions \
         GROUP BY event_id HAVING sum(sign) > 0)"
    ))?;
    let mut seen = BTreeSet::new();
    for r in rejected {
        if !once(&mut seen, &r.event_id) {
            continue;
        }
        add_rejection(&mut s, catalog, unit, &r.reason, &r.raw_payload);
    }
    let retried: Vec<Retried> = ch.fetch(&format!(
        "SELECT period, customer_id, sku, toInt64(count()) AS events \
         FROM (SELECT event_id FROM {{db}}.duplicates WHERE epoch <= {upto}) AS retry \
         ANY INNER JOIN (SELECT event_id, invoice_period AS period, customer_id, sku \
         FROM {{db}}.usage_events WHERE epoch <= {upto}) AS original USING event_id \
         GROUP BY period, customer_id, sku"
    ))?;
    for r in retried {
        s.duplicates(Key::new(&r.period, &r.customer_id, &r.sku), r.events);
    }
    let lines: Vec<LineSums> = ch.fetch(&format!(
        "SELECT invoice_period, customer_id, contract_id, sku, region, service_period, line_type, currency, \
         toInt64(sum(events * sign)) AS events, \
         toString(sumIf(quantity, sign > 0) - sumIf(quantity, sign < 0)) AS quantity, \
         toString(sumIf(amount, sign > 0) - sumIf(amount, sign < 0)) AS amount \
         FROM {{db}}.invoice_lines WHERE line_type IN ('usage', 'adjustment', 'cap') AND epoch <= {upto}{customer} \
         GROUP BY invoice_period, customer_id, contract_id, sku, region, service_period, line_type, currency \
         HAVING sum(sign) > 0"
    ))?;
    for r in lines {
        let u = units(catalog, &r.sku);
        let quantity = decimal(&r.quantity, "invoice_lines: quantity", Quantity::parse)?;
        let c = Counted {
            amount: decimal(&r.amount, "invoice_lines: amount", Amount::parse)?,
            ..counted(u, r.events, quantity)
        };
        let key = Key::new(&r.invoice_period, &r.customer_id, &r.sku);
        let line = IssuedLine {
            customer_id: r.customer_id,
            contract_id: r.contract_id,
            sku: r.sku,
            region: r.region,
            service_period: r.service_period,
        };
        s.line(key, line, &r.line_type, &r.currency, c);
    }
    for line in re_rated(ch, upto, &customer)? {
        s.re_rated(line);
    }
    Ok(s.rows(|k| scope.keeps(k)))
}

/// Lines re-priced with their usage unchanged: in one epoch of one generation, the retraction
/// of a line's state and the state that replaced it have the same events and quantity but not
/// the same amount. Only a catalog change does that (a restart under a changed catalog re-rates
/// billed usage); a line that took new usage changes its events or quantity.
fn re_rated(ch: &ClickHouse, upto: i128, customer: &str) -> Result<Vec<IssuedLine>, String> {
    let lines: Vec<Later> = ch.fetch(&format!(
        "SELECT DISTINCT customer_id, contract_id, sku, region, service_period, toUInt8(0) AS correction \
         FROM (SELECT customer_id, contract_id, sku, region, service_period \
           FROM {{db}}.invoice_lines \
           WHERE line_type IN ('usage', 'adjustment') AND epoch <= {upto}{customer} \
           GROUP BY customer_id, contract_id, sku, region, service_period, invoice_period, line_type, generation, epoch \
           HAVING countIf(sign < 0) > 0 AND sum(events * sign) = 0 \
             AND sumIf(quantity, sign > 0) = sumIf(quantity, sign < 0) \
             AND sumIf(amount, sign > 0) != sumIf(amount, sign < 0))"
    ))?;
    Ok(lines.into_iter().map(Later::line).collect())
}

/// The printed scorecard: the totals, each period, and the customers who lose the most.
pub fn render(rows: &[Scored]) -> String {
    let mut s = String::new();
    let totals: Vec<&Scored> = rows
        .iter()
        .filter(|r| r.key.customer_id == ALL && r.key.sku == ALL)
        .collect();
    let mut periods: Vec<&str> = totals.iter().map(|r| r.key.period.as_str()).collect();
    periods.sort_unstable();
    periods.dedup();
    periods.retain(|p| *p != ALL);
    for period in std::iter::once(ALL).chain(periods) {
        let here: Vec<&Scored> = totals
            .iter()
            .copied()
            .filter(|r| r.key.period == period)
            .collect();
        let title = if period == ALL {
            "all periods".to_string()
        } else if period.is_empty() {
            "period unknown (payload without a timestamp)".to_string()
        } else {
            format!("period {period}")
        };
        render_capture(&mut s, &title, &here);
        render_errors(&mut s, &here);
    }
    render_worst(&mut s, rows);
    s
}

pub(crate) fn sum_of(rows: &[&Scored], measure: &str, cause: &str) -> Counted {
    let mut c = Counted::default();
    for r in rows
        .iter()
        .filter(|r| r.measure == measure && r.cause == cause)
    {
        c += r.counted;
    }
    c
}

pub(crate) fn money(rows: &[&Scored], measure: &str, cause: &str) -> String {
    let mut by_currency: BTreeMap<&str, Amount> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.measure == measure && r.cause == cause)
    {
        *by_currency.entry(&r.currency).or_default() += r.counted.amount;
    }
    let text: Vec<String> = by_currency
        .into_iter()
        .filter(|(_, a)| *a != Amount::ZERO)
        .map(|(c, a)| {
            let d = minor_unit_digits(c);
            format!("{} {c}", a.round_to(d, Rounding::HalfEven).format_fixed(d))
        })
        .collect();
    text.join(" + ")
}

fn render_capture(s: &mut String, title: &str, rows: &[&Scored]) {
    let metered = sum_of(rows, CAPTURE, cause::METERED);
    if metered == Counted::default() {
        return;
    }
    let billed = sum_of(rows, CAPTURE, cause::BILLED);
    let cap = sum_of(rows, CAPTURE, cause::SPEND_CAP);
    let _ = writeln!(s, "capture, {title}:");
    let _ = writeln!(
        s,
        "  {:<38} {:>12} {:>22} {:>18}",
        "", "events", "units (additive)", "money"
    );
    let mut causes: Vec<&str> = rows
        .iter()
        .filter(|r| r.measure == CAPTURE)
        .map(|r| r.cause.as_str())
        .collect();
    causes.sort_by_key(|c| order(c));
    causes.dedup();
    for c in causes {
        let n = sum_of(rows, CAPTURE, c);
        let label = match c {
            cause::DUPLICATE => "duplicate (retries, not billed)",
            cause::NON_BILLABLE => "non_billable (environment not billed)",
            other => other,
        };
        let indent = if order(c) > 2 && order(c) < 9 {
            "  "
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {:<38} {:>12} {:>22} {:>18}",
            format!("{indent}{label}"),
            n.events,
            n.quantity.to_string(),
            money(rows, CAPTURE, c)
        );
    }
    let rate = |a: i128, b: i128| percent(a, b).unwrap_or_else(|| "n/a".into());
    let _ = writeln!(
        s,
        "  capture rate: events {}, units {}, money {}",
        rate(billed.events.into(), metered.events.into()),
        rate(billed.quantity.0, metered.quantity.0),
        rate((billed.amount + cap.amount).0, metered.amount.0),
    );
}

/// Print order of the capture causes: the headline, then the gap, then what is not usage.
fn order(cause: &str) -> u8 {
    match cause {
        cause::METERED => 0,
        cause::ACCEPTED => 1,
        cause::BILLED => 2,
        cause::UNCOMMITTED => 4,
        cause::UNEXPLAINED => 5,
        cause::SPEND_CAP => 6,
        c if c.starts_with(cause::REJECTED) => 3,
        cause::DUPLICATE => 9,
        _ => 10,
    }
}

fn render_errors(s: &mut String, rows: &[&Scored]) {
    let issued = sum_of(rows, INVOICE_ERROR, cause::ISSUED).events;
    if issued == 0 {
        return;
    }
    let changed = sum_of(rows, INVOICE_ERROR, cause::CHANGED);
    let by = |c| sum_of(rows, INVOICE_ERROR, c).events;
    let _ = writeln!(
        s,
        "  invoice error rate: {} of {issued} issued usage lines changed after their invoice ({}): late usage {}, correction {}, re-rating {}; billed later: {}",
        changed.events,
        percent(changed.events.into(), issued.into()).unwrap_or_default(),
        by(cause::LATE_USAGE),
        by(cause::CORRECTION),
        by(cause::RE_RATING),
        {
            let m = money(rows, INVOICE_ERROR, cause::CHANGED);
            if m.is_empty() { "0".to_string() } else { m }
        }
    );
}

/// The ten customers with the lowest event capture rate (of those that lost any).
fn render_worst(s: &mut String, rows: &[Scored]) {
    let mut per_customer: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| {
        r.measure == CAPTURE && r.key.customer_id != ALL && r.key.period != ALL && r.key.sku != ALL
    }) {
        let e = per_customer.entry(&r.key.customer_id).or_default();
        match r.cause.as_str() {
            cause::METERED => e.0 += r.counted.events,
            cause::BILLED => e.1 += r.counted.events,
            _ => {}
        }
    }
    let mut losing: Vec<(&str, i64, i64)> = per_customer
        .into_iter()
        .filter(|(_, (m, b))| b < m)
        .map(|(c, (m, b))| (c, m, b))
        .collect();
    if losing.is_empty() {
        return;
    }
    losing.sort_by(|a, b| (a.2 as i128 * b.1 as i128).cmp(&(b.2 as i128 * a.1 as i128)));
    let _ = writeln!(s, "customers with the lowest capture (events):");
    for (c, m, b) in losing.into_iter().take(10) {
        let name = if c.is_empty() {
            "(payload names none)"
        } else {
            c
        };
        let _ = writeln!(
            s,
            "  {name:<24} {b} of {m} ({})",
            percent(b.into(), m.into()).unwrap_or_default()
        );
    }
}

/// The metering lag of an embedded run: its `counts.json` (over the whole run; period `*`).
pub fn lag_from_output(out: &Path) -> Result<Vec<Lagged>, String> {
    let path = out.join("counts.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let lag = &v["metering_lag_ms"];
    let mut rows = Vec::new();
    let mut add = |source: &str, partition: i32, stages: &serde_json::Value| {
        for stage in STAGES {
            if let Ok(summary) = serde_json::from_value::<LagSummary>(stages[stage].clone()) {
                rows.push(Lagged {
                    computed_at: EventTime::MIN,
                    run_id: String::new(),
                    period: ALL.into(),
                    source: source.into(),
                    partition,
                    stage,
                    summary,
                });
            }
        }
    };
    if let Some(parts) = lag["partitions"].as_object() {
        for (name, stages) in parts {
            let (source, partition) = name.rsplit_once('#').unwrap_or((name, "0"));
            add(source, partition.parse().unwrap_or(0), stages);
        }
    }
    add(ALL, -1, &lag["all"]);
    Ok(rows)
}

/// The metering lag in ClickHouse: every commit's, merged per period of its commit time and
/// over all periods.
pub fn lag_from_clickhouse(ch: &ClickHouse, unit: PeriodUnit) -> Result<Vec<Lagged>, String> {
    #[derive(Row, Deserialize)]
    struct Committed {
        committed_at: u32,
        lag: String,
    }
    let commits: Vec<Committed> =
        ch.fetch("SELECT committed_at, lag FROM {db}.sink_progress WHERE lag != '' ORDER BY generation, epoch")?;
    let mut by_period: BTreeMap<String, Vec<PartitionLag>> = BTreeMap::new();
    for c in commits {
        let lag: Vec<PartitionLag> = serde_json::from_str(&c.lag)
            .map_err(|e| format!("sink_progress.lag is unreadable: {e}"))?;
        let at = EventTime(i64::from(c.committed_at) * 1000);
        for period in [unit.label(unit.period_of(at)), ALL.to_string()] {
            merge_into(by_period.entry(period).or_default(), &lag);
        }
    }
    Ok(lag_rows(&by_period))
}

fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{:.1} min", ms as f64 / 60_000.0),
        3_600_000..=172_799_999 => format!("{:.1} h", ms as f64 / 3_600_000.0),
        _ => format!("{:.1} d", ms as f64 / 86_400_000.0),
    }
}

/// The printed metering lag: every stage over all partitions, then event → committed per
/// partition (when there are several), for all periods.
pub fn render_lag(rows: &[Lagged]) -> String {
    let mut s = String::new();
    let all: Vec<&Lagged> = rows.iter().filter(|r| r.period == ALL).collect();
    if all.iter().all(|r| r.summary.events == 0) {
        return s;
    }
    let _ = writeln!(s, "metering lag, all periods (p50 / p95 / p99 / max):");
    let line = |s: &mut String, label: &str, r: &Lagged| {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "  {label:<40} {:>9} {:>9} {:>9} {:>9}   ({} events)",
            duration(m.p50_ms),
            duration(m.p95_ms),
            duration(m.p99_ms),
            duration(m.max_ms),
            m.events
        );
    };
    for r in all.iter().filter(|r| r.source == ALL) {
        line(&mut s, &r.stage.replace("_to_", " → "), r);
    }
    let partitions: Vec<&&Lagged> = all
        .iter()
        .filter(|r| r.source != ALL && r.stage == "event_to_committed")
        .collect();
    if partitions.len() > 1 {
        for r in partitions {
            line(
                &mut s,
                &format!("{}#{} event → committed", r.source, r.partition),
                r,
            );
        }
    }
    s
}
