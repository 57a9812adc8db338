//! The exec, account and ops views, computed from one [`Facts`] snapshot.

use std::collections::{BTreeMap, BTreeSet};

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::entitlement::allowances;
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::revenue::{is_catch_up, Amounts};
use meterflow_schemas::rows::LineKind;
use meterflow_schemas::scorecard::{cause, percent, Scored, ALL, CAPTURE, INVOICE_ERROR};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit};
use serde::Serialize;

use super::credits::{credit_balances, CreditBalance};
use super::facts::{
    money_of, quantity, Anomaly, ByCurrency, Facts, Money, Rejections, StandingSignal, Telemetry,
};
use super::reconciled::{reconciliation, Reconciliation};
use crate::reports::invoice_preview::PreviewLine;
use crate::reports::scorecard::{self, sum_of};

/// A SKU's events, quantity, and `(day, quantity)` per day.
type SkuDays = (i64, Quantity, Vec<(String, String)>);

/// Usage revenue is what usage bills: usage lines and late usage billed as adjustments.
fn is_usage(kind: LineKind) -> bool {
    matches!(kind, LineKind::Usage | LineKind::Adjustment)
}

/// A customer, as the pickers list it.
#[derive(Clone, Debug, Serialize)]
pub struct CustomerRef {
    pub id: String,
    pub name: String,
}

/// What the pickers offer: customers of the catalog and invoice periods with lines.
#[derive(Clone, Debug, Serialize)]
pub struct Choices {
    pub source: String,
    pub read_at: String,
    pub customers: Vec<CustomerRef>,
    pub periods: Vec<String>,
}

pub fn choices(f: &Facts, catalog: &Catalog) -> Choices {
    let periods: BTreeSet<String> = f.lines.iter().map(|l| l.invoice_period.clone()).collect();
    Choices {
        source: f.source.clone(),
        read_at: f.read_at.to_string(),
        customers: catalog
            .customers
            .iter()
            .map(|c| CustomerRef {
                id: c.id.clone(),
                name: c.name.clone(),
            })
            .collect(),
        periods: periods.into_iter().collect(),
    }
}

/// The capture rate and the gap by cause, for one scorecard key.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Capture {
    pub metered_events: i64,
    pub billed_events: i64,
    /// Percentages with two decimals (`99.70%`); none when nothing was metered.
    pub events_rate: Option<String>,
    pub units_rate: Option<String>,
    pub money_rate: Option<String>,
    /// Metered but not billed, by cause (rejection reasons, uncommitted, spend cap, ...).
    pub gap: Vec<Gap>,
    pub issued_lines: i64,
    pub changed_lines: i64,
    pub invoice_error_rate: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    pub cause: String,
    pub events: i64,
    pub quantity: String,
    pub money: String,
}

/// The capture of every customer (`customer` [`ALL`]: the scorecard's totals) or of one (the
/// sum of its keys), in one invoice period or all (`period` [`ALL`]).
fn capture(scored: &[Scored], period: &str, customer: &str) -> Capture {
    let rows: Vec<&Scored> = if customer == ALL {
        scored
            .iter()
            .filter(|r| r.key.period == period && r.key.customer_id == ALL && r.key.sku == ALL)
            .collect()
    } else {
        scored
            .iter()
            .filter(|r| r.key.customer_id == customer && r.key.sku != ALL && r.key.period != ALL)
            .filter(|r| period == ALL || r.key.period == period)
            .collect()
    };
    let metered = sum_of(&rows, CAPTURE, cause::METERED);
    let billed = sum_of(&rows, CAPTURE, cause::BILLED);
    let cap = sum_of(&rows, CAPTURE, cause::SPEND_CAP);
    let issued = sum_of(&rows, INVOICE_ERROR, cause::ISSUED).events;
    let changed = sum_of(&rows, INVOICE_ERROR, cause::CHANGED).events;
    let causes: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.measure == CAPTURE)
        .map(|r| r.cause.as_str())
        .filter(|c| {
            c.starts_with(cause::REJECTED)
                || [cause::UNCOMMITTED, cause::UNEXPLAINED, cause::SPEND_CAP].contains(c)
        })
        .collect();
    Capture {
        metered_events: metered.events,
        billed_events: billed.events,
        events_rate: percent(billed.events.into(), metered.events.into()),
        units_rate: percent(billed.quantity.0, metered.quantity.0),
        money_rate: percent((billed.amount + cap.amount).0, metered.amount.0),
        gap: causes
            .into_iter()
            .map(|c| {
                let n = sum_of(&rows, CAPTURE, c);
                Gap {
                    cause: c.to_string(),
                    events: n.events,
                    quantity: n.quantity.to_string(),
                    money: scorecard::money(&rows, CAPTURE, c),
                }
            })
            .collect(),
        issued_lines: issued,
        changed_lines: changed,
        invoice_error_rate: percent(changed.into(), issued.into()),
    }
}

/// The exec view.
#[derive(Clone, Debug, Serialize)]
pub struct Exec {
    /// The invoice period shown (none: all of them).
    pub period: Option<String>,
    pub usage_revenue: Vec<Money>,
    pub invoiced: Vec<Money>,
    /// Per invoice period, every period: `(period, usage revenue, invoiced)`.
    pub trend: Vec<PeriodMoney>,
    /// Accepted billable events per day in the period shown.
    pub daily_events: Vec<(String, i64)>,
    pub capture: Capture,
    /// Open anomalies by severity, and the usage revenue a drop or silence may be missing.
    pub anomalies: BTreeMap<String, usize>,
    pub at_risk_anomalies: Vec<Money>,
    /// Money metered but not billed (rejections, uncommitted, unexplained).
    pub at_risk_capture: String,
    /// What the latest `meterflow reconcile` found (none: it never ran).
    pub reconciliation: Option<Reconciliation>,
    /// The latest revenue forecast per month and currency (empty: none was made).
    pub forecast: Vec<ForecastMonth>,
    /// The revenue schedule per period and currency (empty: `meterflow revenue` never ran).
    pub recognition: Vec<RecognitionPeriod>,
    pub customers: Vec<CustomerMoney>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeriodMoney {
    pub period: String,
    pub currency: String,
    pub usage_revenue: String,
    pub invoiced: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CustomerMoney {
    pub customer: String,
    pub name: String,
    pub usage_revenue: Vec<Money>,
    pub invoiced: Vec<Money>,
}

fn period_keeps(period: Option<&str>, p: &str) -> bool {
    period.is_none_or(|want| want == p)
}

/// Whether `day` (`YYYY-MM-DD`) falls in the period labelled `period`.
fn day_in(unit: PeriodUnit, period: Option<&str>, day: &str) -> bool {
    let Some(period) = period else {
        return true;
    };
    let (Some(p), Ok(t)) = (
        unit.parse_label(period),
        EventTime::parse_rfc3339(&format!("{day}T00:00:00Z")),
    ) else {
        return false;
    };
    unit.period_of(t) == p
}

/// The average price per unit a customer's SKU billed in an invoice period (usage lines).
fn unit_prices(
    lines: &[PreviewLine],
) -> BTreeMap<(String, String, String), (Amount, Quantity, String)> {
    let mut out: BTreeMap<(String, String, String), (Amount, Quantity, String)> = BTreeMap::new();
    for l in lines.iter().filter(|l| is_usage(l.kind)) {
        let e = out
            .entry((l.customer.clone(), l.sku.clone(), l.invoice_period.clone()))
            .or_insert((Amount::ZERO, Quantity::ZERO, l.currency.clone()));
        e.0 += l.amount;
        e.1 += quantity(&l.quantity);
    }
    out
}

pub fn exec(f: &Facts, catalog: &Catalog, unit: PeriodUnit, period: Option<&str>) -> Exec {
    let mut usage: BTreeMap<String, Amount> = BTreeMap::new();
    let mut invoiced: BTreeMap<String, Amount> = BTreeMap::new();
    let mut trend: BTreeMap<(String, String), (Amount, Amount)> = BTreeMap::new();
    let mut per_customer: BTreeMap<String, (ByCurrency, ByCurrency)> = BTreeMap::new();
    for l in &f.lines {
        let t = trend
            .entry((l.invoice_period.clone(), l.currency.clone()))
            .or_default();
        t.1 += l.amount;
        if is_usage(l.kind) {
            t.0 += l.amount;
        }
        if !period_keeps(period, &l.invoice_period) {
            continue;
        }
        let c = per_customer.entry(l.customer.clone()).or_default();
        *invoiced.entry(l.currency.clone()).or_default() += l.amount;
        *c.1.entry(l.currency.clone()).or_default() += l.amount;
        if is_usage(l.kind) {
            *usage.entry(l.currency.clone()).or_default() += l.amount;
            *c.0.entry(l.currency.clone()).or_default() += l.amount;
        }
    }
    let mut daily: BTreeMap<String, i64> = BTreeMap::new();
    for d in f.daily.iter().filter(|d| day_in(unit, period, &d.day)) {
        *daily.entry(d.day.clone()).or_default() += d.events;
    }
    let mut anomalies: BTreeMap<String, usize> = BTreeMap::new();
    let prices = unit_prices(&f.lines);
    let mut at_risk: BTreeMap<String, Amount> = BTreeMap::new();
    for a in &f.anomalies {
        let Ok(start) = EventTime::parse_rfc3339(&a.window_start) else {
            continue;
        };
        let label = unit.label(unit.period_of(start));
        if !period_keeps(period, &label) {
            continue;
        }
        *anomalies.entry(a.severity.clone()).or_default() += 1;
        let missing = quantity(&a.expected) - quantity(&a.observed);
        if a.kind != "spike" && missing > Quantity::ZERO {
            if let Some((amount, q, currency)) =
                prices.get(&(a.customer_id.clone(), a.sku.clone(), label))
            {
                if *q > Quantity::ZERO {
                    *at_risk.entry(currency.clone()).or_default() +=
                        Amount(amount.0 * missing.0 / q.0);
                }
            }
        }
    }
    let scorecard_period = period.unwrap_or(ALL);
    let cap = capture(&f.scored, scorecard_period, ALL);
    let rows: Vec<&Scored> = f
        .scored
        .iter()
        .filter(|r| {
            r.key.period == scorecard_period && r.key.customer_id == ALL && r.key.sku == ALL
        })
        .filter(|r| {
            r.cause.starts_with(cause::REJECTED)
                || r.cause == cause::UNCOMMITTED
                || r.cause == cause::UNEXPLAINED
        })
        .collect();
    let mut lost: BTreeMap<String, Amount> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.measure == CAPTURE) {
        *lost.entry(r.currency.clone()).or_default() += r.counted.amount;
    }
    lost.retain(|c, a| !c.is_empty() && *a != Amount::ZERO);
    let mut customers: Vec<CustomerMoney> = per_customer
        .into_iter()
        .map(|(customer, (u, i))| CustomerMoney {
            name: name_of(catalog, &customer),
            customer,
            usage_revenue: money_of(u),
            invoiced: money_of(i),
        })
        .collect();
    customers.sort_by(|a, b| {
        let total = |c: &CustomerMoney| {
            c.invoiced
                .iter()
                .map(|m| Amount::parse(&m.exact).unwrap_or_default().0)
                .sum::<i128>()
        };
        total(b).cmp(&total(a)).then(a.customer.cmp(&b.customer))
    });
    Exec {
        period: period.map(String::from),
        usage_revenue: money_of(usage),
        invoiced: money_of(invoiced),
        trend: trend
            .into_iter()
            .map(|((period, currency), (u, i))| {
                let d = minor_unit_digits(&currency);
                PeriodMoney {
                    period,
                    usage_revenue: u.round_to(d, Rounding::HalfEven).format_fixed(d),
                    invoiced: i.round_to(d, Rounding::HalfEven).format_fixed(d),
                    currency,
                }
            })
            .collect(),
        daily_events: daily.into_iter().collect(),
        capture: cap,
        anomalies,
        at_risk_anomalies: money_of(at_risk),
        at_risk_capture: money_of(lost)
            .into_iter()
            .map(|m| format!("{} {}", m.amount, m.currency))
            .collect::<Vec<_>>()
            .join(" + "),
        reconciliation: reconciliation(f, catalog, period),
        forecast: forecast_months(f),
        recognition: recognition_periods(f),
        customers,
    }
}

/// Amounts of the revenue schedule (docs/revenue.md), rounded to the currency's minor unit.
#[derive(Clone, Debug, Serialize)]
pub struct Recognised {
    pub period: String,
    pub currency: String,
    pub billed: String,
    pub recognised: String,
    pub deferred: String,
    pub unbilled: String,
    /// `recognised + deferred = billed + unbilled` (exactly, before rounding), as every
    /// schedule row keeps it.
    pub balances: bool,
}

fn recognised(period: &str, currency: &str, a: &Amounts) -> Recognised {
    let digits = minor_unit_digits(currency);
    let fixed = |a: Amount| a.round_to(digits, Rounding::HalfEven).format_fixed(digits);
    Recognised {
        period: period.to_string(),
        currency: currency.to_string(),
        billed: fixed(a.billed),
        recognised: fixed(a.recognised),
        deferred: fixed(a.deferred),
        unbilled: fixed(a.unbilled),
        balances: a.balances(),
    }
}

/// One period of the revenue schedule in one currency, all contracts, with the balances it
/// leaves: the contract liability (deferred revenue) and the contract asset (unbilled
/// receivable), summed over this period and every one before it.
#[derive(Clone, Debug, Serialize)]
pub struct RecognitionPeriod {
    #[serde(flatten)]
    pub amounts: Recognised,
    pub liability: String,
    pub asset: String,
}

fn recognition_periods(f: &Facts) -> Vec<RecognitionPeriod> {
    // By currency, then period: the balances run in period order.
    let mut sums: BTreeMap<(&str, &str), Amounts> = BTreeMap::new();
    for (k, a) in &f.schedule {
        sums.entry((&k.currency, &k.period)).or_default().add(*a);
    }
    let mut held: BTreeMap<&str, (Amount, Amount)> = BTreeMap::new();
    let mut out: Vec<RecognitionPeriod> = sums
        .into_iter()
        .map(|((currency, period), a)| {
            let balance = held.entry(currency).or_default();
            balance.0 += a.deferred;
            balance.1 += a.unbilled;
            let digits = minor_unit_digits(currency);
            let fixed = |a: Amount| a.round_to(digits, Rounding::HalfEven).format_fixed(digits);
            RecognitionPeriod {
                amounts: recognised(period, currency, &a),
                liability: fixed(balance.0),
                asset: fixed(balance.1),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let (a, b) = (&a.amounts, &b.amounts);
        (&a.period, &a.currency).cmp(&(&b.period, &b.currency))
    });
    out
}

/// A row of a customer's revenue schedule in the period shown.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleLine {
    pub contract: String,
    pub obligation: String,
    pub service_period: String,
    /// Revenue of a closed service period recognised late (late usage).
    pub catch_up: bool,
    #[serde(flatten)]
    pub amounts: Recognised,
}

fn schedule_lines(f: &Facts, customer: &str, period: Option<&str>) -> Vec<ScheduleLine> {
    f.schedule
        .iter()
        .filter(|(k, _)| k.customer_id == customer && period_keeps(period, &k.period))
        .map(|(k, a)| ScheduleLine {
            contract: k.contract_id.clone(),
            obligation: k.obligation.clone(),
            service_period: k.service_period.clone(),
            catch_up: is_catch_up(k),
            amounts: recognised(&k.period, &k.currency, a),
        })
        .collect()
}

/// One month of the revenue forecast in one currency: its two streams and the 80% interval.
#[derive(Clone, Debug, Serialize)]
pub struct ForecastMonth {
    pub month: String,
    pub currency: String,
    pub contracted: String,
    pub usage: String,
    pub total: String,
    pub low: String,
    pub high: String,
    pub as_of: String,
}

fn forecast_months(f: &Facts) -> Vec<ForecastMonth> {
    let mut by: BTreeMap<(String, String), ([Amount; 4], String)> = BTreeMap::new();
    for r in &f.forecast {
        let e = by.entry((r.month.clone(), r.currency.clone())).or_default();
        let a = |s: &str| Amount::parse(s).unwrap_or_default();
        let i = usize::from(r.stream != "contracted");
        e.0[i] += a(&r.amount);
        e.0[2] += a(&r.low);
        e.0[3] += a(&r.high);
        e.1 = r.as_of.clone();
    }
    by.into_iter()
        .map(
            |((month, currency), ([contracted, usage, low, high], as_of))| {
                let d = minor_unit_digits(&currency);
                let fixed = |a: Amount| a.round_to(d, Rounding::HalfEven).format_fixed(d);
                ForecastMonth {
                    contracted: fixed(contracted),
                    usage: fixed(usage),
                    total: fixed(contracted + usage),
                    low: fixed(low),
                    high: fixed(high),
                    month,
                    currency,
                    as_of,
                }
            },
        )
        .collect()
}

fn name_of(catalog: &Catalog, customer: &str) -> String {
    catalog
        .customers
        .iter()
        .find(|c| c.id == customer)
        .map_or_else(|| customer.to_string(), |c| c.name.clone())
}

/// The account view of one customer.
#[derive(Clone, Debug, Serialize)]
pub struct Account {
    pub customer: String,
    pub name: String,
    /// The invoice period shown: the one asked for, or the customer's latest.
    pub period: Option<String>,
    pub periods: Vec<String>,
    /// Per SKU: its unit and usage per day in the period.
    pub usage: Vec<SkuUsage>,
    pub entitlements: Vec<EntitlementUse>,
    pub commitments: Vec<Commitment>,
    /// Prepaid credit grants after the period shown.
    pub credits: Vec<CreditBalance>,
    /// The revenue schedule's rows in the period shown (empty: `meterflow revenue` never ran).
    pub revenue: Vec<ScheduleLine>,
    pub invoice: Vec<InvoiceLine>,
    pub invoice_total: Vec<Money>,
    pub capture: Capture,
    pub signals: Vec<StandingSignal>,
    pub anomalies: Vec<Anomaly>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SkuUsage {
    pub sku: String,
    pub unit: String,
    pub events: i64,
    pub quantity: String,
    /// `(day, quantity)`.
    pub days: Vec<(String, String)>,
}

/// An entitlement in one service period: what is included, used and left, and when it runs
/// out at the rate so far.
#[derive(Clone, Debug, Serialize)]
pub struct EntitlementUse {
    pub contract: String,
    pub sku: String,
    pub unit: String,
    pub period: String,
    pub included: String,
    /// Included plus rollover.
    pub allowance: String,
    pub used: String,
    pub remaining: String,
    pub used_percent: Option<String>,
    /// Units per day, from the period start to the end of the latest day with usage.
    pub burn_per_day: Option<String>,
    /// When the allowance is used up at that rate (RFC 3339), if within the period; already
    /// used up: when the period started being over.
    pub exhausted_at: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Commitment {
    pub contract: String,
    pub currency: String,
    pub minimum_spend: Option<String>,
    pub maximum_spend: Option<String>,
    pub budget: Option<String>,
    pub usage_spend: String,
    /// What the commitment true-up line adds this period.
    pub true_up: String,
    pub credits_used: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct InvoiceLine {
    pub contract: String,
    pub line_type: String,
    pub sku: String,
    pub service_period: String,
    pub region: String,
    pub events: i64,
    pub quantity: String,
    pub amount: String,
    pub currency: String,
}

/// The account view; `None` when the customer is not in the catalog.
pub fn account(
    f: &Facts,
    catalog: &Catalog,
    unit: PeriodUnit,
    customer: &str,
    period: Option<&str>,
) -> Option<Account> {
    let ix = catalog.customer(customer)?;
    let c = &catalog.customers[ix.ix()];
    let periods: BTreeSet<String> = f
        .lines
        .iter()
        .filter(|l| l.customer == customer)
        .map(|l| l.invoice_period.clone())
        .collect();
    let period = period
        .map(String::from)
        .or_else(|| periods.iter().next_back().cloned());
    let period = period.as_deref();
    let unit_of = |sku: &str| {
        catalog
            .sku(sku)
            .map_or_else(String::new, |s| catalog.skus[s.ix()].unit.clone())
    };
    // Usage per SKU and day.
    let mut usage: BTreeMap<String, SkuDays> = BTreeMap::new();
    for d in f
        .daily
        .iter()
        .filter(|d| d.customer_id == customer && day_in(unit, period, &d.day))
    {
        let e = usage.entry(d.sku.clone()).or_default();
        e.0 += d.events;
        e.1 += quantity(&d.quantity);
        e.2.push((d.day.clone(), quantity(&d.quantity).to_string()));
    }
    // Entitlements: allowance per service period (with rollover), against net usage.
    let mut entitlements = Vec::new();
    let mut commitments = Vec::new();
    let latest_day: BTreeMap<&str, &str> = f
        .daily
        .iter()
        .filter(|d| d.customer_id == customer)
        .fold(BTreeMap::new(), |mut m, d| {
            let e = m.entry(d.sku.as_str()).or_insert(d.day.as_str());
            if d.day.as_str() > *e {
                *e = d.day.as_str();
            }
            m
        });
    for contract in catalog.contracts.iter().filter(|k| k.customer == ix) {
        for e in &contract.entitlements {
            let sku = catalog.skus[e.sku.ix()].id.clone();
            let mut used: BTreeMap<EventTime, Quantity> = BTreeMap::new();
            for u in f
                .service_usage
                .iter()
                .filter(|u| u.contract_id == contract.id && u.sku == sku)
            {
                if let Some(p) = unit.parse_label(&u.service_period) {
                    *used.entry(p.0).or_default() += quantity(&u.quantity);
                }
            }
            if let Some(p) = period.and_then(|p| unit.parse_label(p)) {
                used.entry(p.0).or_default();
            }
            for (start, allowance, used) in allowances(e, &used, |t| unit.end_of(Period(t))) {
                let label = unit.label(Period(start));
                if !period_keeps(period, &label) {
                    continue;
                }
                let end = unit.end_of(Period(start));
                let through = latest_day
                    .get(sku.as_str())
                    .and_then(|d| EventTime::parse_rfc3339(&format!("{d}T00:00:00Z")).ok())
                    .map(|t| EventTime(t.0 + 86_400_000).min(end))
                    .filter(|t| *t > start);
                let days = through.map(|t| (t.0 - start.0) as i128);
                let burn = days
                    .filter(|_| used > Quantity::ZERO)
                    .map(|ms| Quantity(used.0 * 86_400_000 / ms));
                let exhausted = days.filter(|_| used > Quantity::ZERO).and_then(|ms| {
                    let at = EventTime(start.0 + (ms * allowance.0 / used.0) as i64);
                    (at < end).then_some(at)
                });
                entitlements.push(EntitlementUse {
                    contract: contract.id.clone(),
                    unit: unit_of(&sku),
                    sku: sku.clone(),
                    period: label,
                    included: e.included.to_string(),
                    allowance: allowance.to_string(),
                    used: used.to_string(),
                    remaining: (allowance - used).max(Quantity::ZERO).to_string(),
                    used_percent: percent(used.0, allowance.0),
                    burn_per_day: burn.map(|b| b.to_string()),
                    exhausted_at: exhausted.map(|t| t.to_string()),
                });
            }
        }
        let t = &contract.terms;
        let currency = catalog.rate_cards[contract.rate_card.ix()].currency.clone();
        let of = |kinds: &[LineKind]| {
            f.lines
                .iter()
                .filter(|l| {
                    l.contract == contract.id
                        && period_keeps(period, &l.invoice_period)
                        && kinds.contains(&l.kind)
                })
                .fold(Amount::ZERO, |a, l| a + l.amount)
        };
        let fixed = |a: Amount| {
            let d = minor_unit_digits(&currency);
            a.round_to(d, Rounding::HalfEven).format_fixed(d)
        };
        if t.minimum_spend.is_some()
            || t.maximum_spend.is_some()
            || t.budget.is_some()
            || !t.credits.is_empty()
        {
            commitments.push(Commitment {
                contract: contract.id.clone(),
                minimum_spend: t.minimum_spend.map(fixed),
                maximum_spend: t.maximum_spend.map(fixed),
                budget: t.budget.map(fixed),
                usage_spend: fixed(of(&[LineKind::Usage, LineKind::Adjustment])),
                true_up: fixed(of(&[LineKind::Commitment])),
                credits_used: fixed(of(&[LineKind::Credit])),
                currency: currency.clone(),
            });
        }
    }
    let mut total: BTreeMap<String, Amount> = BTreeMap::new();
    let mut mine: Vec<&PreviewLine> = f
        .lines
        .iter()
        .filter(|l| l.customer == customer && period_keeps(period, &l.invoice_period))
        .collect();
    // As an invoice reads: per contract, usage first, then fees, discounts, ..., tax.
    mine.sort_by_key(|l| {
        let kind = LineKind::ALL.iter().position(|k| *k == l.kind);
        (
            &l.invoice_period,
            &l.contract,
            kind,
            &l.sku,
            &l.service_period,
            &l.region,
        )
    });
    let invoice: Vec<InvoiceLine> = mine
        .into_iter()
        .map(|l| {
            *total.entry(l.currency.clone()).or_default() += l.amount;
            let d = minor_unit_digits(&l.currency);
            InvoiceLine {
                contract: l.contract.clone(),
                line_type: l.kind.as_str().to_string(),
                sku: l.sku.clone(),
                service_period: l.service_period.clone(),
                region: l.region.clone(),
                events: l.events,
                quantity: l.quantity.clone(),
                amount: l.amount.round_to(d, Rounding::HalfEven).format_fixed(d),
                currency: l.currency.clone(),
            }
        })
        .collect();
    Some(Account {
        customer: customer.to_string(),
        name: c.name.clone(),
        period: period.map(String::from),
        periods: periods.into_iter().collect(),
        usage: usage
            .into_iter()
            .map(|(sku, (events, q, days))| SkuUsage {
                unit: unit_of(&sku),
                sku,
                events,
                quantity: q.to_string(),
                days,
            })
            .collect(),
        entitlements,
        commitments,
        credits: period.map_or_else(Vec::new, |p| {
            credit_balances(&f.lines, catalog, unit, customer, p)
        }),
        revenue: schedule_lines(f, customer, period),
        invoice,
        invoice_total: money_of(total),
        capture: capture(&f.scored, period.unwrap_or(ALL), customer),
        signals: f
            .signals
            .iter()
            .filter(|s| s.customer_id == customer && period_keeps(period, &s.period))
            .cloned()
            .collect(),
        anomalies: f
            .anomalies
            .iter()
            .filter(|a| a.customer_id == customer)
            .cloned()
            .collect(),
    })
}

/// The ops view.
#[derive(Clone, Debug, Serialize)]
pub struct Ops {
    pub period: Option<String>,
    pub rejections: Vec<Rejections>,
    pub rejected: u64,
    pub duplicates: u64,
    pub accepted: u64,
    pub on_time: u64,
    /// Behind the watermark, inside the tolerance: billed in its own (still open) period.
    pub out_of_order: u64,
    /// Usage of a closed period, billed as an adjustment in the open one.
    pub late: u64,
    pub corrections: u64,
    pub non_billable: u64,
    /// `(stage, events, p50, p95, p99, max)` in milliseconds, all partitions.
    pub lag: Vec<LagStage>,
    pub telemetry: Option<Telemetry>,
    /// The [`OPS_ANOMALIES`] latest anomalies of the period, and how many there are in all.
    pub anomalies: Vec<Anomaly>,
    pub anomalies_total: usize,
}

/// At most this many anomalies in the ops view (a backfill can raise thousands; the
/// account view lists a customer's in full).
pub const OPS_ANOMALIES: usize = 200;

#[derive(Clone, Debug, Serialize)]
pub struct LagStage {
    pub stage: String,
    pub source: String,
    pub events: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

pub fn ops(f: &Facts, unit: PeriodUnit, period: Option<&str>) -> Ops {
    let mut o = Ops {
        period: period.map(String::from),
        rejected: f.rejections.iter().map(|r| r.records).sum(),
        rejections: f.rejections.clone(),
        duplicates: f.duplicates,
        accepted: 0,
        on_time: 0,
        out_of_order: 0,
        late: 0,
        corrections: 0,
        non_billable: 0,
        lag: f
            .lag
            .iter()
            .filter(|l| l.period == period.unwrap_or(ALL) || (period.is_none() && l.period == ALL))
            .map(|l| LagStage {
                stage: l.stage.to_string(),
                source: l.source.clone(),
                events: l.summary.events,
                p50_ms: l.summary.p50_ms,
                p95_ms: l.summary.p95_ms,
                p99_ms: l.summary.p99_ms,
                max_ms: l.summary.max_ms,
            })
            .collect(),
        telemetry: f.telemetry.clone(),
        anomalies: f
            .anomalies
            .iter()
            .filter(|a| {
                EventTime::parse_rfc3339(&a.window_start)
                    .is_ok_and(|t| period_keeps(period, &unit.label(unit.period_of(t))))
            })
            .cloned()
            .collect(),
        anomalies_total: 0,
    };
    o.anomalies_total = o.anomalies.len();
    o.anomalies.sort_by(|a, b| {
        b.window_start
            .cmp(&a.window_start)
            .then(a.customer_id.cmp(&b.customer_id))
    });
    o.anomalies.truncate(OPS_ANOMALIES);
    for a in f
        .arrivals
        .iter()
        .filter(|a| period_keeps(period, &a.invoice_period))
    {
        o.accepted += a.events;
        match a.arrival.as_str() {
            "on_time" => o.on_time += a.events,
            "out_of_order" => o.out_of_order += a.events,
            _ => o.late += a.events,
        }
        if !a.correction_action.is_empty() {
            o.corrections += a.events;
        }
        if a.billable == 0 {
            o.non_billable += a.events;
        }
    }
    for r in &mut o.rejections {
        if r.remediation.is_empty() {
            if let Some(reason) = Reason::ALL.iter().find(|x| x.code() == r.reason) {
                r.remediation = reason.remediation().to_string();
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_belongs_to_its_period() {
        assert!(day_in(PeriodUnit::Month, Some("2026-11"), "2026-11-30"));
        assert!(!day_in(PeriodUnit::Month, Some("2026-11"), "2026-12-01"));
        assert!(day_in(PeriodUnit::Month, None, "2026-12-01"));
        assert!(!day_in(PeriodUnit::Month, Some("bogus"), "2026-12-01"));
    }
}
