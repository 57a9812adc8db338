//! Reconciliation: what the accepted events say each invoice line must hold, recomputed in one
//! plain pass (no dataflow, no pricing state), compared with what the invoice lines hold.
//!
//! A line is keyed by customer, contract, SKU, price region and service period, and for additive
//! meters also by invoice period (late usage of a closed period is an adjustment line in the
//! open one). For a meter of the SKU's aggregation, from the billable accepted events:
//! - `sum`: quantity = Σ quantity (amends add theirs, voids their negated one); events = originals
//!   − voids (an amend counts none);
//! - `count`: quantity = events, counted as for `sum`;
//! - `max`, `latest`, `unique_count` (per service period, over the invoice periods that billed
//!   it): the largest reading, the reading with the latest event time (the larger on a tie), or
//!   the number of distinct values of the SKU's `unique_by` attribute, over the readings no void
//!   took back; events = originals − voids.
//!
//! Billed: Σ `quantity × sign` and Σ `events × sign` of the `usage` and `adjustment` lines.
//!
//! Money, for additive meters: each event is priced as the catalog prices it (the rate-card
//! version effective at its time for its contract, the price for its region), the usage of a
//! line's service period is summed per price, and `pricing::price_period` prices it in version
//! order, with the tier position carried across versions. The invoice period that first bills a
//! service period bills what its usage costs; each later one (late usage, corrections) the
//! difference it makes: `price(usage up to it) − price(usage before it)`. Compared exactly
//! (`amount_exact`) and as billed (`amount`, rounded once per line).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::catalog::{distinct_value, Aggregation, Catalog, PriceIdx, SkuIdx};
use crate::entitlement::signals;
use crate::money::{minor_unit_digits, Amount, Quantity, Rounding};
use crate::pricing::invoice::contract_invoice;
use crate::pricing::percentage::limit_adjustment;
use crate::pricing::{price_period, PriceModel, Segment};
use crate::rows::LineKind;
use crate::time::{EventTime, Period, PeriodUnit};

/// Which comparison a reconciliation row is: a line's quantity and events.
pub const EVENTS_TO_LINES: &str = "events_to_lines";
/// A threshold or limit signal of an entitlement: whether the events call for it, and whether
/// it is active in `entitlement_signals`.
pub const EVENTS_TO_SIGNALS: &str = "events_to_signals";
/// An invoice-level line (fees, discounts, commitment true-up, cap, credits, tax) recomputed
/// from its invoice's usage and adjustment lines, and each invoice's subtotal, tax and total.
pub const LINES_TO_TOTALS: &str = "lines_to_totals";

/// The identity of a line, as the tables name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineRef {
    pub customer_id: String,
    pub contract_id: String,
    pub sku: String,
    pub region: String,
    pub service_period: String,
    /// Empty for non-additive meters: they are compared per service period.
    pub invoice_period: String,
}

/// Events and quantity of a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub events: i64,
    pub quantity: Quantity,
}

/// One accepted event, as far as reconciliation reads it.
#[derive(Clone, Debug, Default)]
pub struct EventFacts {
    pub event_id: String,
    /// The line it counts on; `invoice_period` is filled for every meter.
    pub line: LineRef,
    pub quantity: Quantity,
    pub time: EventTime,
    pub billable: bool,
    /// `""`, `amend` or `void`.
    pub correction_action: String,
    pub correction_of: String,
    /// The event's `metadata.attributes` (JSON), for `unique_count` meters.
    pub attributes: String,
}

/// One invoice line's signed row, as far as reconciliation reads it.
#[derive(Clone, Debug, Default)]
pub struct LineFacts {
    pub line: LineRef,
    pub line_type: String,
    pub events: i64,
    pub quantity: Quantity,
    pub money: Money,
    pub sign: i64,
}

/// One checked line: what the events say, what is billed, and the first events behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciled {
    /// When the check ran, and which run of `meterflow reconcile` it was.
    pub checked_at: EventTime,
    pub run_id: String,
    pub check: &'static str,
    pub line: LineRef,
    /// For [`EVENTS_TO_SIGNALS`]: the signal (`threshold 90%`, `soft_limit`, `hard_limit`);
    /// empty for lines.
    pub signal: String,
    /// For [`LINES_TO_TOTALS`]: the invoice-level line type (`subscription`, `discount`,
    /// `commitment`, `cap`, `credit`, `tax`), or `subtotal`, `tax_total`, `total` for an
    /// invoice's totals; empty otherwise.
    pub line_type: String,
    pub expected: Tally,
    pub billed: Tally,
    /// What the line's usage costs, for additive meters (`None`: not compared).
    pub expected_money: Option<Money>,
    pub billed_money: Money,
    /// The currency of the money (the contract's).
    pub currency: String,
    /// Up to [`EVENT_IDS`] ids of the events behind the line (kept for drifting lines).
    pub event_ids: Vec<String>,
}

impl Reconciled {
    pub fn drifts(&self) -> bool {
        self.expected != self.billed || self.money_drifts()
    }

    pub fn money_drifts(&self) -> bool {
        self.expected_money.is_some_and(|m| m != self.billed_money)
    }
}

/// A line's money: exact, and as billed (rounded to the currency's minor unit once per line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Money {
    pub exact: Amount,
    pub billed: Amount,
}

impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, o: Money) {
        self.exact += o.exact;
        self.billed += o.billed;
    }
}

/// How many event ids a drifting line lists.
pub const EVENT_IDS: usize = 10;

/// The readings of a non-additive line.
#[derive(Default)]
struct Readings {
    events: i64,
    /// (event id, value, time, distinct value) of the originals.
    originals: Vec<(String, Quantity, EventTime, Option<u128>)>,
}

/// Recomputes every line from the events, which may come in any order.
#[derive(Default)]
pub struct Expected {
    additive: BTreeMap<LineRef, (Tally, Vec<String>)>,
    readings: BTreeMap<LineRef, Readings>,
    voided: HashSet<String>,
}

fn aggregation(catalog: &Catalog, sku: &str) -> Aggregation {
    catalog
        .sku(sku)
        .map_or(Aggregation::Sum, |s| catalog.skus[s.ix()].aggregation)
}

impl Expected {
    pub fn add(&mut self, catalog: &Catalog, e: EventFacts) {
        if !e.billable {
            return;
        }
        let aggregation = aggregation(catalog, &e.line.sku);
        let events = match e.correction_action.as_str() {
            "void" => -1,
            "amend" => 0,
            _ => 1,
        };
        if e.correction_action == "void" {
            self.voided.insert(e.correction_of.clone());
        }
        if aggregation.is_additive() {
            let (t, ids) = self.additive.entry(e.line).or_default();
            t.events += events;
            if aggregation == Aggregation::Sum {
                t.quantity += e.quantity;
            }
            if ids.len() < EVENT_IDS {
                ids.push(e.event_id);
            }
            return;
        }
        let distinct = match aggregation {
            Aggregation::UniqueCount => {
                let sku = catalog.sku(&e.line.sku).map(|s| &catalog.skus[s.ix()]);
                let key = sku.and_then(|s| s.unique_by.as_deref()).unwrap_or_default();
                distinct_value(Some(&e.attributes), key)
            }
            _ => None,
        };
        let mut line = e.line;
        line.invoice_period.clear();
        let r = self.readings.entry(line).or_default();
        r.events += events;
        if events > 0 {
            r.originals.push((e.event_id, e.quantity, e.time, distinct));
        }
    }

    /// Adds an additive line's events and quantity summed elsewhere (by ClickHouse, over the
    /// same events `add` would have been given).
    pub fn add_summed(&mut self, line: LineRef, summed: Tally) {
        let (t, _) = self.additive.entry(line).or_default();
        t.events += summed.events;
        t.quantity += summed.quantity;
    }

    /// Every line's expected tally, with the first events behind it.
    pub fn lines(self, catalog: &Catalog) -> BTreeMap<LineRef, (Tally, Vec<String>)> {
        let mut lines = self.additive;
        for (line, (t, _)) in lines.iter_mut() {
            if aggregation(catalog, &line.sku) == Aggregation::Count {
                t.quantity = whole(t.events);
            }
        }
        for (line, r) in self.readings {
            let live: Vec<_> = r
                .originals
                .iter()
                .filter(|(id, ..)| !self.voided.contains(id))
                .collect();
            let quantity = match aggregation(catalog, &line.sku) {
                Aggregation::Max => live.iter().map(|o| o.1).max().unwrap_or_default(),
                Aggregation::Latest => live
                    .iter()
                    .max_by_key(|o| (o.2, o.1))
                    .map_or(Quantity::ZERO, |o| o.1),
                _ => {
                    let distinct: BTreeSet<u128> = live.iter().filter_map(|o| o.3).collect();
                    whole(distinct.len() as i64)
                }
            };
            let ids = r.originals.iter().take(EVENT_IDS).map(|o| o.0.clone());
            let tally = Tally {
                events: r.events,
                quantity,
            };
            lines.insert(line, (tally, ids.collect()));
        }
        lines
    }
}

fn whole(n: i64) -> Quantity {
    Quantity(n as i128 * 10i128.pow(Quantity::SCALE))
}

/// What the invoice lines bill per line (usage and adjustment lines).
pub fn billed(
    catalog: &Catalog,
    rows: impl IntoIterator<Item = LineFacts>,
) -> BTreeMap<LineRef, (Tally, Money)> {
    let mut billed: BTreeMap<LineRef, (Tally, Money)> = BTreeMap::new();
    for r in rows {
        if !matches!(r.line_type.as_str(), "usage" | "adjustment") {
            continue;
        }
        let mut line = r.line;
        if !aggregation(catalog, &line.sku).is_additive() {
            line.invoice_period.clear();
        }
        let (t, m) = billed.entry(line).or_default();
        let sign = r.sign as i128;
        t.events += r.events * r.sign;
        t.quantity += Quantity(r.quantity.0 * sign);
        *m += Money {
            exact: Amount(r.money.exact.0 * sign),
            billed: Amount(r.money.billed.0 * sign),
        };
    }
    billed
}

/// The pricing input of one event: its line (`invoice_period` filled), its price, and what it
/// adds (events as lines count them; units; per-transaction fee limits).
#[derive(Clone, Debug)]
pub struct PricedEvent {
    pub line: LineRef,
    pub price: PriceIdx,
    pub usage: PriceUsage,
}

/// Usage at one price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriceUsage {
    pub events: i64,
    pub quantity: Quantity,
    pub fee_adjustment: Amount,
}

impl PriceUsage {
    /// What one event adds: `line_events` as a line counts it (an original 1, a void −1, an
    /// amend 0) and its quantity (a count meter's units are its events).
    pub fn of_event(
        catalog: &Catalog,
        price: PriceIdx,
        line_events: i64,
        quantity: Quantity,
    ) -> PriceUsage {
        let p = catalog.price(price);
        let quantity = match catalog.skus[p.sku.ix()].aggregation {
            Aggregation::Count => Quantity(line_events as i128 * Quantity::SCALE_ONE),
            _ => quantity,
        };
        let fee_adjustment = match &p.model {
            // A void takes back its original's adjustment (amends are refused for these).
            PriceModel::Percentage(m) if m.has_limits() => {
                let sign = line_events.signum() as i128;
                let original = Quantity(quantity.0 * sign);
                Amount(limit_adjustment(m, original).0 * sign)
            }
            _ => Amount::ZERO,
        };
        PriceUsage {
            events: line_events,
            quantity,
            fee_adjustment,
        }
    }

    fn add(&mut self, o: PriceUsage) {
        self.events += o.events;
        self.quantity += o.quantity;
        self.fee_adjustment += o.fee_adjustment;
    }
}

/// What each line of additive meters costs, recomputed from its events' usage per price.
#[derive(Default)]
pub struct ExpectedMoney {
    /// Per service-period line (`invoice_period` empty): per (invoice period, price), the usage.
    usage: BTreeMap<LineRef, BTreeMap<(Period, PriceIdx), PriceUsage>>,
}

impl ExpectedMoney {
    /// Adds usage (of one event, or summed over events with one price).
    pub fn add(&mut self, unit: PeriodUnit, line: &LineRef, price: PriceIdx, usage: PriceUsage) {
        let Some(invoice) = unit.parse_label(&line.invoice_period) else {
            return;
        };
        let mut group = line.clone();
        group.invoice_period.clear();
        self.usage
            .entry(group)
            .or_default()
            .entry((invoice, price))
            .or_default()
            .add(usage);
    }

    /// Every line's money: per service period, each invoice period bills
    /// `price(usage up to it) − price(usage before it)`.
    pub fn lines(
        &self,
        catalog: &Catalog,
        unit: PeriodUnit,
        rounding: Rounding,
    ) -> BTreeMap<LineRef, Money> {
        let mut out = BTreeMap::new();
        for (group, usage) in &self.usage {
            // Usage that nets to nothing (an event and its void) is no usage at all: the
            // pipeline's sums consolidate it away, and a line with none bills nothing (not even
            // a first tier's flat fee).
            let usage: BTreeMap<(Period, PriceIdx), PriceUsage> = usage
                .iter()
                .filter(|(_, u)| **u != PriceUsage::default())
                .map(|(k, u)| (*k, *u))
                .collect();
            let invoices: BTreeSet<Period> = usage.keys().map(|(p, _)| *p).collect();
            let mut before = Amount::ZERO;
            for invoice in invoices {
                let mut per_price: BTreeMap<PriceIdx, PriceUsage> = BTreeMap::new();
                for ((_, price), u) in usage.range(..=(invoice, PriceIdx(u32::MAX))) {
                    per_price.entry(*price).or_default().add(*u);
                }
                let upto = charge(catalog, &per_price);
                let exact = upto - before;
                before = upto;
                let currency = per_price
                    .keys()
                    .next()
                    .map_or("", |p| &*catalog.price(*p).currency);
                let mut line = group.clone();
                line.invoice_period = unit.label(invoice);
                let billed = exact.round_to(minor_unit_digits(currency), rounding);
                out.insert(line, Money { exact, billed });
            }
        }
        out
    }
}

/// The exact charge of usage per price, its segments in version order.
fn charge(catalog: &Catalog, per_price: &BTreeMap<PriceIdx, PriceUsage>) -> Amount {
    let mut prices: Vec<(&PriceIdx, &PriceUsage)> = per_price.iter().collect();
    prices.sort_by_key(|(p, _)| {
        let price = catalog.price(**p);
        (price.effective_from, price.version, **p)
    });
    let segments: Vec<Segment> = prices
        .iter()
        .map(|(p, u)| Segment {
            model: &catalog.price(**p).model,
            quantity: u.quantity,
            events: u.events,
            fee_adjustment: u.fee_adjustment,
        })
        .collect();
    price_period(&segments).total()
}

/// Every line either side knows, compared; lines both sides hold nothing for are left out.
/// `money`: the expected money of the lines of additive meters ([`ExpectedMoney::lines`]); a
/// line of an additive meter without events behind it is expected to bill nothing.
pub fn compare(
    catalog: &Catalog,
    expected: BTreeMap<LineRef, (Tally, Vec<String>)>,
    mut money: BTreeMap<LineRef, Money>,
    mut billed: BTreeMap<LineRef, (Tally, Money)>,
) -> Vec<Reconciled> {
    let rest: Vec<LineRef> = billed
        .keys()
        .filter(|l| !expected.contains_key(*l))
        .cloned()
        .collect();
    let mut out = Vec::new();
    let mut line_of = |line: LineRef, expected: Tally, event_ids: Vec<String>| {
        let (billed, billed_money) = billed.remove(&line).unwrap_or_default();
        let expected_money = aggregation(catalog, &line.sku)
            .is_additive()
            .then(|| money.remove(&line).unwrap_or_default());
        let currency = catalog
            .contract(&line.contract_id)
            .map_or("", |c| catalog.currency_of(c))
            .to_string();
        Reconciled {
            checked_at: EventTime::MIN,
            run_id: String::new(),
            check: EVENTS_TO_LINES,
            line,
            signal: String::new(),
            line_type: String::new(),
            expected,
            billed,
            expected_money,
            billed_money,
            currency,
            event_ids,
        }
    };
    for (line, (expected, event_ids)) in expected {
        out.push(line_of(line, expected, event_ids));
    }
    for line in rest {
        out.push(line_of(line, Tally::default(), Vec::new()));
    }
    out.retain(|r| {
        r.expected != Tally::default()
            || r.billed != Tally::default()
            || r.expected_money.is_some_and(|m| m != Money::default())
            || r.billed_money != Money::default()
    });
    out.sort_by(|a, b| a.line.cmp(&b.line));
    out
}

/// An invoice's subtotal, tax and total in one currency, as the invoice preview shows them:
/// the subtotal is every line but tax, the total the subtotal plus tax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvoiceTotals {
    pub subtotal: Money,
    pub tax: Money,
}

impl InvoiceTotals {
    pub fn add(&mut self, kind: LineKind, m: Money) {
        if kind == LineKind::Tax {
            self.tax += m;
        } else {
            self.subtotal += m;
        }
    }

    pub fn total(&self) -> Money {
        let mut t = self.subtotal;
        t += self.tax;
        t
    }

    /// `(line_type, money)` of the three totals, as [`LINES_TO_TOTALS`] rows name them.
    fn named(&self) -> [(&'static str, Money); 3] {
        [
            ("subtotal", self.subtotal),
            ("tax_total", self.tax),
            ("total", self.total()),
        ]
    }
}

/// The invoice as the events say it must be, against the invoice billed: every invoice-level
/// line recomputed (`pricing::invoice` rules) from the usage lines' expected amounts, against
/// the current invoice-level lines; then each invoice's (customer, invoice period, currency)
/// subtotal, tax and total, expected (usage lines' expected amounts plus the recomputed
/// invoice-level lines) against billed (every current line).
///
/// `usage`: the expected money of the usage and adjustment lines of additive meters
/// ([`ExpectedMoney::lines`]); the lines of other meters count as billed (their quantity is
/// checked, their money is not recomputed). `rows`: every signed row of `invoice_lines` (or
/// their sums per line, with sign 1). The invoice periods run through the latest any line bills
/// (the one the stream has reached); a period without usage still bills fees and commitment.
pub fn compare_totals(
    catalog: &Catalog,
    unit: PeriodUnit,
    rounding: Rounding,
    usage: &BTreeMap<LineRef, Money>,
    rows: impl IntoIterator<Item = LineFacts>,
) -> Vec<Reconciled> {
    type Key = (LineRef, LineKind);
    let mut current: BTreeMap<Key, Money> = BTreeMap::new();
    for r in rows {
        let Some(kind) = LineKind::parse(&r.line_type) else {
            continue;
        };
        let sign = r.sign as i128;
        *current.entry((r.line, kind)).or_default() += Money {
            exact: Amount(r.money.exact.0 * sign),
            billed: Amount(r.money.billed.0 * sign),
        };
    }
    current.retain(|_, m| *m != Money::default());
    let through = current
        .keys()
        .filter_map(|(l, _)| unit.parse_label(&l.invoice_period))
        .max();
    // The usage lines the events call for: recomputed money, or as billed for other meters.
    let mut expected_usage: BTreeMap<&LineRef, Money> = usage
        .iter()
        .filter(|(_, m)| **m != Money::default())
        .map(|(l, m)| (l, *m))
        .collect();
    for ((l, kind), m) in &current {
        if kind.is_usage() && !aggregation(catalog, &l.sku).is_additive() {
            *expected_usage.entry(l).or_default() += *m;
        }
    }
    // Per contract: its usage by invoice period and SKU, as the invoice reads it.
    type Usage = BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>>;
    let mut by_contract: BTreeMap<(&str, &str), Usage> = BTreeMap::new();
    for (l, m) in &expected_usage {
        let (Some(p), Some(sku)) = (unit.parse_label(&l.invoice_period), catalog.sku(&l.sku))
        else {
            continue;
        };
        let contract = (l.customer_id.as_str(), l.contract_id.as_str());
        *by_contract
            .entry(contract)
            .or_default()
            .entry(p.0)
            .or_default()
            .entry(sku)
            .or_default() += m.billed;
    }
    let mut expected: BTreeMap<Key, Money> = BTreeMap::new();
    for ((customer, contract), periods) in by_contract {
        let Some(c) = catalog.contract(contract) else {
            continue;
        };
        let currency = catalog.currency_of(c);
        for (start, d) in contract_invoice(catalog, c, periods, through, currency, unit, rounding) {
            let label = unit.label(Period(start));
            let line = LineRef {
                customer_id: customer.into(),
                contract_id: contract.into(),
                sku: catalog.sku_id(d.sku).into(),
                region: catalog.region_name(None).into(),
                service_period: label.clone(),
                invoice_period: label,
            };
            expected.insert(
                (line, d.kind),
                Money {
                    exact: d.amount_exact,
                    billed: d.amount,
                },
            );
        }
    }
    let currency_of = |l: &LineRef| {
        catalog
            .contract(&l.contract_id)
            .map_or("", |c| catalog.currency_of(c))
            .to_string()
    };
    let row = |line: LineRef, line_type: &str, currency: String, e: Money, b: Money| Reconciled {
        checked_at: EventTime::MIN,
        run_id: String::new(),
        check: LINES_TO_TOTALS,
        line,
        signal: String::new(),
        line_type: line_type.into(),
        expected: Tally::default(),
        billed: Tally::default(),
        expected_money: Some(e),
        billed_money: b,
        currency,
        event_ids: Vec::new(),
    };
    // Per invoice: totals as billed, and with the recomputed invoice-level lines.
    let mut totals: BTreeMap<(String, String, String), (InvoiceTotals, InvoiceTotals)> =
        BTreeMap::new();
    let invoice = |l: &LineRef| {
        (
            l.customer_id.clone(),
            l.invoice_period.clone(),
            currency_of(l),
        )
    };
    for ((l, kind), m) in &current {
        totals.entry(invoice(l)).or_default().1.add(*kind, *m);
    }
    for (l, m) in &expected_usage {
        totals
            .entry(invoice(l))
            .or_default()
            .0
            .add(LineKind::Usage, *m);
    }
    for ((l, kind), m) in &expected {
        totals.entry(invoice(l)).or_default().0.add(*kind, *m);
    }
    let mut out = Vec::new();
    let derived: BTreeSet<&Key> = expected
        .keys()
        .chain(current.keys().filter(|(_, k)| !k.is_usage()))
        .collect();
    for key in derived {
        let e = expected.get(key).copied().unwrap_or_default();
        let b = current.get(key).copied().unwrap_or_default();
        out.push(row(
            key.0.clone(),
            key.1.as_str(),
            currency_of(&key.0),
            e,
            b,
        ));
    }
    for ((customer, period, currency), (e, b)) in totals {
        let line = LineRef {
            customer_id: customer,
            service_period: period.clone(),
            invoice_period: period,
            ..LineRef::default()
        };
        for ((name, e), (_, b)) in e.named().into_iter().zip(b.named()) {
            out.push(row(line.clone(), name, currency.clone(), e, b));
        }
    }
    out
}

/// A threshold or limit signal, as `entitlement_signals` names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignalRef {
    pub customer_id: String,
    pub contract_id: String,
    pub sku: String,
    /// The service period's label.
    pub period: String,
    /// `threshold`, `soft_limit` or `hard_limit`.
    pub signal: String,
    /// The threshold's percentage (0 for limits).
    pub percent: u32,
}

impl SignalRef {
    fn describe(&self) -> String {
        match self.signal.as_str() {
            "threshold" => format!("threshold {}%", self.percent),
            other => other.to_string(),
        }
    }
}

/// Whether a signal is a threshold or limit of an entitlement (the burn signals follow spend,
/// not usage, and are not reconciled here).
pub fn is_usage_signal(kind: &str) -> bool {
    matches!(kind, "threshold" | "soft_limit" | "hard_limit")
}

/// The threshold and limit signals the recomputed lines call for under the entitlement rules
/// (`crate::entitlement::signals`): usage per contract, SKU and service period is the lines'
/// quantity summed over regions and invoice periods. With the usage behind each.
pub fn expected_signals(
    catalog: &Catalog,
    unit: PeriodUnit,
    lines: &BTreeMap<LineRef, (Tally, Vec<String>)>,
) -> BTreeMap<SignalRef, Quantity> {
    type Usage = BTreeMap<EventTime, Quantity>;
    let mut usage: BTreeMap<(&str, &str, &str), Usage> = BTreeMap::new();
    for (l, (t, _)) in lines {
        let Some(p) = unit.parse_label(&l.service_period) else {
            continue;
        };
        let key = (
            l.customer_id.as_str(),
            l.contract_id.as_str(),
            l.sku.as_str(),
        );
        *usage.entry(key).or_default().entry(p.0).or_default() += t.quantity;
    }
    let mut out = BTreeMap::new();
    for ((customer, contract, sku), by_period) in usage {
        let (Some(c), Some(s)) = (catalog.contract(contract), catalog.sku(sku)) else {
            continue;
        };
        let Some(e) = catalog.contracts[c.ix()]
            .entitlements
            .iter()
            .find(|e| e.sku == s)
        else {
            continue;
        };
        for (start, signal) in signals(e, &by_period, |t| unit.end_of(Period(t))) {
            let r = SignalRef {
                customer_id: customer.into(),
                contract_id: contract.into(),
                sku: sku.into(),
                period: unit.label(Period(start)),
                signal: signal.kind.as_str().into(),
                percent: signal.percent,
            };
            out.insert(r, by_period.get(&start).copied().unwrap_or_default());
        }
    }
    out
}

/// Signals called for against signals active: one row per signal either side has. `expected`
/// and `billed` events are 1 where the signal should be (is) active; the quantities are the
/// period's usage from the events.
pub fn compare_signals(
    expected: BTreeMap<SignalRef, Quantity>,
    active: BTreeSet<SignalRef>,
) -> Vec<Reconciled> {
    let mut all: BTreeMap<SignalRef, (Option<Quantity>, bool)> = BTreeMap::new();
    for (s, q) in expected {
        all.entry(s).or_default().0 = Some(q);
    }
    for s in active {
        all.entry(s).or_default().1 = true;
    }
    all.into_iter()
        .map(|(s, (usage, is_active))| {
            let q = usage.unwrap_or_default();
            Reconciled {
                checked_at: EventTime::MIN,
                run_id: String::new(),
                check: EVENTS_TO_SIGNALS,
                signal: s.describe(),
                line_type: String::new(),
                line: LineRef {
                    customer_id: s.customer_id,
                    contract_id: s.contract_id,
                    sku: s.sku,
                    region: String::new(),
                    service_period: s.period,
                    invoice_period: String::new(),
                },
                expected: Tally {
                    events: i64::from(usage.is_some()),
                    quantity: q,
                },
                billed: Tally {
                    events: i64::from(is_active),
                    quantity: q,
                },
                expected_money: None,
                billed_money: Money::default(),
                currency: String::new(),
                event_ids: Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn line(sku: &str, invoice: &str) -> LineRef {
        LineRef {
            customer_id: "acme".into(),
            contract_id: "acme-2026".into(),
            sku: sku.into(),
            region: "*".into(),
            service_period: "2026-11".into(),
            invoice_period: invoice.into(),
        }
    }

    fn event(id: &str, sku: &str, q: &str, at_ms: i64) -> EventFacts {
        EventFacts {
            event_id: id.into(),
            line: line(sku, "2026-11"),
            quantity: Quantity::parse(q).unwrap(),
            time: EventTime(at_ms),
            billable: true,
            ..EventFacts::default()
        }
    }

    fn correction(mut e: EventFacts, action: &str, of: &str) -> EventFacts {
        e.correction_action = action.into();
        e.correction_of = of.into();
        e
    }

    fn tally(events: i64, q: &str) -> Tally {
        Tally {
            events,
            quantity: Quantity::parse(q).unwrap(),
        }
    }

    #[test]
    fn each_meter_is_recomputed_from_its_events() {
        let c = fixtures::catalog();
        let mut e = Expected::default();
        // sum: an amend adds its quantity and no event; a void takes its original back out.
        e.add(&c, event("a1", "api_calls", "10", 1));
        e.add(&c, event("a2", "api_calls", "5", 2));
        e.add(
            &c,
            correction(event("a3", "api_calls", "2.5", 3), "amend", "a1"),
        );
        e.add(
            &c,
            correction(event("a4", "api_calls", "-5", 4), "void", "a2"),
        );
        let mut nonbillable = event("a5", "api_calls", "100", 5);
        nonbillable.billable = false;
        e.add(&c, nonbillable);
        // max: the void takes the peak back, so the next reading is the peak.
        e.add(&c, event("s1", "seats", "7", 1));
        e.add(&c, event("s2", "seats", "9", 2));
        e.add(&c, correction(event("s3", "seats", "-9", 3), "void", "s2"));
        // latest: the latest event time wins, whatever the order of arrival.
        e.add(&c, event("d2", "disk", "30", 20));
        e.add(&c, event("d1", "disk", "50", 10));
        // unique_count: distinct user ids.
        for (id, user) in [("u1", "ann"), ("u2", "bob"), ("u3", "ann")] {
            let mut ev = event(id, "active_users", "1", 1);
            ev.attributes = format!(r#"{{"user_id":"{user}"}}"#);
            e.add(&c, ev);
        }
        let lines = e.lines(&c);
        let got = |sku: &str, invoice: &str| lines[&line(sku, invoice)].0;
        assert_eq!(got("api_calls", "2026-11"), tally(1, "12.5"));
        assert_eq!(got("seats", ""), tally(1, "7"));
        assert_eq!(got("disk", ""), tally(2, "30"));
        assert_eq!(got("active_users", ""), tally(3, "2"));
        assert_eq!(
            lines[&line("api_calls", "2026-11")].1,
            ["a1", "a2", "a3", "a4"]
        );
    }

    #[test]
    fn a_line_billed_differently_drifts_and_names_its_events() {
        let c = fixtures::catalog();
        let mut e = Expected::default();
        e.add(&c, event("a1", "api_calls", "10", 1));
        e.add(&c, event("t1", "tokens", "4", 1));
        let lines = |sku: &str, q: &str, sign: i64| LineFacts {
            line: line(sku, "2026-11"),
            line_type: "usage".into(),
            events: 1,
            quantity: Quantity::parse(q).unwrap(),
            money: Money::default(),
            sign,
        };
        // api_calls: re-rated (retracted and inserted again) but equal; tokens billed 3 of 4;
        // a tax line is not usage; storage billed without events behind it.
        let billed_rows = vec![
            lines("api_calls", "10", 1),
            lines("api_calls", "10", -1),
            lines("api_calls", "10", 1),
            lines("tokens", "3", 1),
            LineFacts {
                line_type: "tax".into(),
                ..lines("", "0", 1)
            },
            lines("storage", "2", 1),
        ];
        let checked = compare(&c, e.lines(&c), BTreeMap::new(), billed(&c, billed_rows));
        let drifting: Vec<(&str, Tally, Tally, &[String])> = checked
            .iter()
            .filter(|r| r.expected != r.billed)
            .map(|r| (r.line.sku.as_str(), r.expected, r.billed, &r.event_ids[..]))
            .collect();
        assert_eq!(checked.len(), 3);
        assert_eq!(
            drifting,
            [
                ("storage", Tally::default(), tally(1, "2"), &[][..]),
                (
                    "tokens",
                    tally(1, "4"),
                    tally(1, "3"),
                    &["t1".to_string()][..]
                ),
            ]
        );
    }

    #[test]
    fn money_is_the_price_of_the_usage_up_to_each_invoice_minus_before_it() {
        let c = fixtures::catalog();
        let unit = PeriodUnit::Month;
        let contract = &c.contracts[c.contract("acme-2026").unwrap().ix()];
        let tokens = c.sku("tokens").unwrap();
        let at = |t: &str| EventTime::parse_rfc3339(t).unwrap();
        let mut m = ExpectedMoney::default();
        let mut add = |invoice: &str, time: &str, units: i64| {
            let price = c.price_for(contract, tokens, None, at(time)).unwrap();
            let usage = PriceUsage::of_event(&c, price, 1, Quantity::from_units(units));
            m.add(unit, &line("tokens", invoice), price, usage);
        };
        // Version 1 until the 15th, version 2 after; 300 tokens of the 5th arrive in December.
        add("2026-11", "2026-11-02T00:00:00Z", 800);
        add("2026-11", "2026-11-20T00:00:00Z", 500);
        add("2026-12", "2026-11-05T00:00:00Z", 300);
        let lines = m.lines(&c, unit, Rounding::HalfEven);
        // November: v1 800 × 0.01 + 5; v2 carries on at 800: 200 × 0.02, then tier 2 (flat 1)
        // 300 × 0.004.
        let nov = lines[&line("tokens", "2026-11")];
        assert_eq!(nov.exact, Amount::parse("19.2").unwrap());
        // Up to December: v1 1000 × 0.01 + 5, 100 × 0.005 + 1; v2 500 × 0.004 = 18.5.
        let dec = lines[&line("tokens", "2026-12")];
        assert_eq!(dec.exact, Amount::parse("-0.7").unwrap());
        assert_eq!(dec.billed, Amount::parse("-0.7").unwrap());

        // A line billed a cent off drifts in money only.
        let mut e = Expected::default();
        e.add(&c, event("t1", "tokens", "1300", 1));
        let billed_rows = vec![LineFacts {
            line: line("tokens", "2026-11"),
            line_type: "usage".into(),
            events: 1,
            quantity: Quantity::parse("1300").unwrap(),
            money: Money {
                exact: Amount::parse("19.2").unwrap(),
                billed: Amount::parse("19.21").unwrap(),
            },
            sign: 1,
        }];
        let mut only_nov = lines.clone();
        only_nov.retain(|l, _| l.invoice_period == "2026-11");
        let checked = compare(&c, e.lines(&c), only_nov, billed(&c, billed_rows));
        assert_eq!(checked.len(), 1);
        assert!(checked[0].money_drifts());
        assert_eq!(checked[0].expected, checked[0].billed);
    }

    /// Acme with a 49 fee, a 60 minimum spend and 19% tax; Globex without terms.
    fn with_terms() -> Catalog {
        let toml = fixtures::CATALOG
            .replacen(
                "id = \"acme\"\nname = \"Acme Corp\"\n",
                "id = \"acme\"\nname = \"Acme Corp\"\ntax = \"de\"\n",
                1,
            )
            .replacen(
                "starts = \"2026-01-01T00:00:00Z\"\n",
                "starts = \"2026-01-01T00:00:00Z\"\nminimum_spend = \"60\"\n[[contract.fee]]\nname = \"platform\"\namount = \"49\"\n",
                1,
            );
        crate::catalog::from_toml_str(&format!(
            "[[tax]]\nid = \"de\"\nname = \"VAT\"\nrate = \"0.19\"\n{toml}"
        ))
        .unwrap()
    }

    fn row(
        contract: &str,
        sku: &str,
        kind: &str,
        period: &str,
        amount: &str,
        sign: i64,
    ) -> LineFacts {
        let a = Amount::parse(amount).unwrap();
        LineFacts {
            line: LineRef {
                customer_id: contract.split('-').next().unwrap().into(),
                contract_id: contract.into(),
                sku: sku.into(),
                region: "*".into(),
                service_period: period.into(),
                invoice_period: period.into(),
            },
            line_type: kind.into(),
            money: Money {
                exact: a,
                billed: a,
            },
            sign,
            ..LineFacts::default()
        }
    }

    /// Acme's November (usage 5.00) and December (no usage) as the pipeline bills them, and
    /// Globex's December usage (which takes the stream into December).
    fn billed_invoices() -> Vec<LineFacts> {
        vec![
            row("acme-2026", "api_calls", "usage", "2026-11", "5", 1),
            row("acme-2026", "", "subscription", "2026-11", "49", 1),
            row("acme-2026", "", "commitment", "2026-11", "6", 1),
            row("acme-2026", "", "tax", "2026-11", "11.4", 1),
            row("acme-2026", "", "subscription", "2026-12", "49", 1),
            row("acme-2026", "", "commitment", "2026-12", "11", 1),
            row("acme-2026", "", "tax", "2026-12", "11.4", 1),
            row("globex-legacy", "api_calls", "usage", "2026-12", "3", 1),
        ]
    }

    fn drifting(checked: &[Reconciled]) -> Vec<(String, String, String)> {
        checked
            .iter()
            .filter(|c| c.drifts())
            .map(|c| {
                let l = &c.line;
                (
                    l.contract_id.clone(),
                    l.invoice_period.clone(),
                    c.line_type.clone(),
                )
            })
            .collect()
    }

    fn d(contract: &str, period: &str, kind: &str) -> (String, String, String) {
        (contract.into(), period.into(), kind.into())
    }

    /// What the events say the usage lines cost: Acme's November api_calls `acme`, Globex's
    /// December 3.00.
    fn events_say(acme: &str) -> BTreeMap<LineRef, Money> {
        [
            row("acme-2026", "api_calls", "usage", "2026-11", acme, 1),
            row("globex-legacy", "api_calls", "usage", "2026-12", "3", 1),
        ]
        .into_iter()
        .map(|r| (r.line, r.money))
        .collect()
    }

    #[test]
    fn invoice_level_lines_and_totals_are_recomputed_from_the_usage_lines() {
        let c = with_terms();
        let (unit, r) = (PeriodUnit::Month, Rounding::HalfUp);
        let checked = compare_totals(&c, unit, r, &events_say("5"), billed_invoices());
        assert_eq!(drifting(&checked), vec![]);
        // Six invoice-level lines, and three totals for each of three invoices.
        assert_eq!(checked.len(), 6 + 3 * 3);
        let total = |customer: &str, period: &str| {
            let t = checked
                .iter()
                .find(|t| {
                    t.line.customer_id == customer
                        && t.line.invoice_period == period
                        && t.line_type == "total"
                })
                .unwrap();
            (t.expected_money.unwrap().billed, t.billed_money.billed)
        };
        let a = |s: &str| Amount::parse(s).unwrap();
        assert_eq!(total("acme", "2026-11"), (a("71.4"), a("71.4")));
        assert_eq!(total("globex", "2026-12"), (a("3"), a("3")));

        let with = |at: Option<usize>, extra: &[LineFacts]| {
            let mut rows = billed_invoices();
            if let Some(i) = at {
                rows[i] = extra[0].clone();
            } else {
                rows.extend_from_slice(extra);
            }
            rows
        };
        let cases = [
            (
                // A tax amount edited by a cent: the tax line and the invoice's tax and total.
                with(
                    Some(3),
                    &[row("acme-2026", "", "tax", "2026-11", "11.39", 1)],
                ),
                "5",
                vec![
                    d("acme-2026", "2026-11", "tax"),
                    d("", "2026-11", "tax_total"),
                    d("", "2026-11", "total"),
                ],
            ),
            (
                // Late usage raised November's usage to 10.00 but the true-up was not updated:
                // the commitment line is stale (expected 1.00); the total sums the lines billed.
                with(
                    None,
                    &[
                        row("acme-2026", "api_calls", "usage", "2026-11", "5", -1),
                        row("acme-2026", "api_calls", "usage", "2026-11", "10", 1),
                    ],
                ),
                "10",
                vec![
                    d("acme-2026", "2026-11", "commitment"),
                    d("", "2026-11", "subtotal"),
                    d("", "2026-11", "total"),
                ],
            ),
            (
                // A usage amount edited by a cent: the invoice-level lines still follow the
                // events, the invoice's subtotal and total are a cent off.
                with(
                    Some(0),
                    &[row("acme-2026", "api_calls", "usage", "2026-11", "5.01", 1)],
                ),
                "5",
                vec![d("", "2026-11", "subtotal"), d("", "2026-11", "total")],
            ),
        ];
        for (rows, acme, want) in cases {
            assert_eq!(
                drifting(&compare_totals(&c, unit, r, &events_say(acme), rows)),
                want
            );
        }

        // December's lines lost: a month without usage must still bill fee, true-up and tax.
        let lost: Vec<LineFacts> = billed_invoices()
            .into_iter()
            .filter(|l| !(l.line.contract_id == "acme-2026" && l.line.invoice_period == "2026-12"))
            .collect();
        let got = drifting(&compare_totals(&c, unit, r, &events_say("5"), lost));
        assert!(
            got.contains(&d("acme-2026", "2026-12", "subscription")),
            "{got:?}"
        );
        assert!(
            got.contains(&d("acme-2026", "2026-12", "commitment")),
            "{got:?}"
        );
        assert!(got.contains(&d("", "2026-12", "total")), "{got:?}");
    }
}
