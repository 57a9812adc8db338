//! The leak scorecard: how much of the usage that was metered got billed, and how many issued
//! invoice lines had to change afterwards. Pure arithmetic over counted facts; reading the facts
//! (from CSV tables or ClickHouse) is the caller's job, and docs/scorecard.md gives the formula
//! and the SQL of every number.
//!
//! **Capture** (per invoice period, customer and SKU; causes as rows):
//! - `accepted`: billable accepted usage up to the last commit. Events count as on invoice lines
//!   (a void −1, an amend 0); units are those of additive meters (`sum`; `count` counts events).
//! - `rejected:<reason>`: records rejected for that reason, attributed by the customer, SKU,
//!   quantity and timestamp their payload still names.
//! - `uncommitted`: accepted usage beyond the last commit (a running pipeline's tolerance window).
//! - `metered` = accepted + rejected + uncommitted: the usage that was sent to be billed.
//! - `billed`: the `usage` and `adjustment` invoice lines, `Σ x × sign`.
//! - `unexplained` = accepted − billed: drift, which `meterflow reconcile` itemises.
//! - `spend_cap`: the (negative) amount of `cap` lines, money the contract forgoes.
//! - `duplicate`, `non_billable`: shown, but not usage to bill (a retry; a test environment).
//!
//! Money not billed is estimated at the line's own average price: billed amount ÷ billed units
//! for additive meters, ÷ billed events for the others. Capture rate = billed ÷ metered, in
//! events, units and money (money: (billed + spend_cap) ÷ metered).
//!
//! **Invoice error** (per service period, customer and SKU): `issued` counts invoice lines
//! (contract, SKU, region, service period) that billed usage; `changed` those changed after their
//! invoice period, with the cause: `late_usage` (late events billed as an adjustment line in a
//! later invoice), `correction` (an amend or void billed in a later invoice), `re_rating` (the
//! line re-priced with unchanged usage by a later generation, after a catalog change).
//! Invoice error rate = changed ÷ issued.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::AddAssign;

use crate::money::{Amount, Quantity};
use crate::time::EventTime;

/// The capture measure's rows.
pub const CAPTURE: &str = "capture";
/// The invoice error measure's rows.
pub const INVOICE_ERROR: &str = "invoice_error";
/// The key value of a total row (all periods, customers or SKUs).
pub const ALL: &str = "*";

/// The causes a scorecard row names.
pub mod cause {
    pub const METERED: &str = "metered";
    pub const ACCEPTED: &str = "accepted";
    pub const BILLED: &str = "billed";
    pub const UNCOMMITTED: &str = "uncommitted";
    pub const UNEXPLAINED: &str = "unexplained";
    pub const SPEND_CAP: &str = "spend_cap";
    pub const DUPLICATE: &str = "duplicate";
    pub const NON_BILLABLE: &str = "non_billable";
    /// Prefix of a rejection reason's row.
    pub const REJECTED: &str = "rejected:";
    pub const ISSUED: &str = "issued";
    pub const CHANGED: &str = "changed";
    pub const LATE_USAGE: &str = "late_usage";
    pub const CORRECTION: &str = "correction";
    pub const RE_RATING: &str = "re_rating";
}

/// Where a row is counted: a period label, customer id and SKU id ([`ALL`] in total rows; empty
/// when a rejected payload does not say).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub period: String,
    pub customer_id: String,
    pub sku: String,
}

impl Key {
    pub fn new(period: &str, customer_id: &str, sku: &str) -> Key {
        Key {
            period: period.into(),
            customer_id: customer_id.into(),
            sku: sku.into(),
        }
    }
}

/// Events, units and money of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub events: i64,
    pub quantity: Quantity,
    pub amount: Amount,
}

impl AddAssign for Counted {
    fn add_assign(&mut self, o: Counted) {
        self.events += o.events;
        self.quantity += o.quantity;
        self.amount += o.amount;
    }
}

impl Counted {
    pub fn events(events: i64, quantity: Quantity) -> Counted {
        Counted {
            events,
            quantity,
            amount: Amount::ZERO,
        }
    }
    fn minus(self, o: Counted) -> Counted {
        Counted {
            events: self.events - o.events,
            quantity: self.quantity - o.quantity,
            amount: self.amount - o.amount,
        }
    }
}

/// One scorecard row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scored {
    pub computed_at: EventTime,
    pub run_id: String,
    pub measure: &'static str,
    pub cause: String,
    pub key: Key,
    pub currency: String,
    pub counted: Counted,
}

/// An invoice line as the invoice error counts it (its invoice period aside).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IssuedLine {
    pub customer_id: String,
    pub contract_id: String,
    pub sku: String,
    pub region: String,
    pub service_period: String,
}

impl IssuedLine {
    fn key(&self) -> Key {
        Key::new(&self.service_period, &self.customer_id, &self.sku)
    }
}

/// Accumulates the facts; [`Scorecard::rows`] turns them into rows.
#[derive(Default)]
pub struct Scorecard {
    capture: BTreeMap<Key, BTreeMap<String, Counted>>,
    /// Whether a key's units are additive (its SKU's meter is `sum` or `count`).
    per_event_price: BTreeSet<Key>,
    currency: BTreeMap<String, String>,
    issued: BTreeMap<IssuedLine, Amount>,
    changed: BTreeMap<IssuedLine, (BTreeSet<&'static str>, Counted)>,
}

impl Scorecard {
    fn add(&mut self, key: Key, cause: &str, c: Counted) {
        *self
            .capture
            .entry(key)
            .or_default()
            .entry(cause.to_string())
            .or_default() += c;
    }

    /// Accepted usage: `committed` up to the last commit, `billable` in a billed environment.
    /// `quantity` is the meter's additive units (zero for the other meters).
    pub fn accepted(&mut self, key: Key, billable: bool, committed: bool, c: Counted) {
        let cause = match (billable, committed) {
            (false, _) => cause::NON_BILLABLE,
            (true, true) => cause::ACCEPTED,
            (true, false) => cause::UNCOMMITTED,
        };
        self.add(key, cause, c);
    }

    /// Records rejected for `reason`.
    pub fn rejected(&mut self, key: Key, reason: &str, c: Counted) {
        self.add(key, &format!("{}{reason}", cause::REJECTED), c);
    }

    /// Retries of accepted events.
    pub fn duplicates(&mut self, key: Key, events: i64) {
        self.add(
            key,
            cause::DUPLICATE,
            Counted::events(events, Quantity::ZERO),
        );
    }

    /// Says that the key's meter is not additive: money not billed is estimated per event.
    pub fn priced_per_event(&mut self, key: Key) {
        self.per_event_price.insert(key);
    }

    /// A current invoice line's net numbers (`Σ x × sign`), in the invoice period `key.period`.
    pub fn line(
        &mut self,
        key: Key,
        line: IssuedLine,
        line_type: &str,
        currency: &str,
        c: Counted,
    ) {
        if !currency.is_empty() {
            self.currency
                .entry(key.customer_id.clone())
                .or_insert_with(|| currency.to_string());
        }
        match line_type {
            "usage" | "adjustment" => {
                let later = key.period != line.service_period;
                self.add(key, cause::BILLED, c);
                let issued = self.issued.entry(line.clone()).or_default();
                if !later {
                    *issued += c.amount;
                }
                if later && c != Counted::default() {
                    self.changed.entry(line).or_default().1 += c;
                }
            }
            "cap" => {
                let key = Key {
                    sku: String::new(),
                    ..key
                };
                self.add(
                    key,
                    cause::SPEND_CAP,
                    Counted {
                        amount: c.amount,
                        ..Counted::default()
                    },
                );
            }
            _ => {}
        }
    }

    /// Usage of `line` billed in a later invoice period than its service period's: a late event
    /// or a correction (an amend or void). The line counts as changed if that left an adjustment
    /// on a later invoice.
    pub fn billed_later(&mut self, line: IssuedLine, correction: bool) {
        let cause = if correction {
            cause::CORRECTION
        } else {
            cause::LATE_USAGE
        };
        self.changed.entry(line).or_default().0.insert(cause);
    }

    /// `line` was re-priced with unchanged usage by a later generation.
    pub fn re_rated(&mut self, line: IssuedLine) {
        self.changed
            .entry(line)
            .or_default()
            .0
            .insert(cause::RE_RATING);
    }

    /// Every row of the keys `keep` keeps: per key, then the totals per period and over
    /// everything (per currency for money).
    pub fn rows(mut self, keep: impl Fn(&Key) -> bool) -> Vec<Scored> {
        let mut rows = Vec::new();
        let keys: Vec<Key> = self.capture.keys().filter(|k| keep(k)).cloned().collect();
        for key in keys {
            let causes = self.capture.remove(&key).unwrap_or_default();
            let per_event = self.per_event_price.contains(&key);
            for (cause, c) in capture_rows(causes, per_event) {
                rows.push(self.row(CAPTURE, cause, key.clone(), c));
            }
        }
        let mut errors: BTreeMap<Key, BTreeMap<&'static str, Counted>> = BTreeMap::new();
        for (line, amount) in &self.issued {
            let issued = errors.entry(line.key()).or_default();
            *issued.entry(cause::ISSUED).or_default() += Counted {
                events: 1,
                quantity: Quantity::ZERO,
                amount: *amount,
            };
        }
        for (line, (causes, later)) in &self.changed {
            // Usage billed late that nets to nothing (a late event and its void) changed nothing.
            if *later == Counted::default() && !causes.contains(cause::RE_RATING) {
                continue;
            }
            let by_cause = errors.entry(line.key()).or_default();
            let one = Counted::events(1, Quantity::ZERO);
            *by_cause.entry(cause::CHANGED).or_default() += Counted {
                amount: later.amount,
                quantity: later.quantity,
                ..one
            };
            for cause in causes {
                *by_cause.entry(cause).or_default() += one;
            }
        }
        for (key, by_cause) in errors.into_iter().filter(|(k, _)| keep(k)) {
            for (cause, c) in by_cause {
                rows.push(self.row(INVOICE_ERROR, cause.to_string(), key.clone(), c));
            }
        }
        let totals = totals(&rows);
        rows.extend(totals);
        rows
    }

    fn row(&self, measure: &'static str, cause: String, key: Key, counted: Counted) -> Scored {
        Scored {
            computed_at: EventTime::MIN,
            run_id: String::new(),
            measure,
            currency: self
                .currency
                .get(&key.customer_id)
                .cloned()
                .unwrap_or_default(),
            cause,
            key,
            counted,
        }
    }
}

/// The capture rows of one key: the counted causes, the money usage not billed would have
/// cost at the key's average price, `metered` and `unexplained`.
fn capture_rows(
    mut causes: BTreeMap<String, Counted>,
    per_event: bool,
) -> BTreeMap<String, Counted> {
    let billed = causes.get(cause::BILLED).copied().unwrap_or_default();
    let price = |c: Counted| -> Amount {
        if per_event {
            share(billed.amount, c.events as i128, billed.events as i128)
        } else {
            share(billed.amount, c.quantity.0, billed.quantity.0)
        }
    };
    let mut metered = Counted::default();
    for (cause, c) in causes.iter_mut() {
        let unbilled = cause.starts_with(cause::REJECTED) || cause == cause::UNCOMMITTED;
        if unbilled {
            c.amount = price(*c);
        }
        if unbilled || cause == cause::ACCEPTED {
            metered += *c;
        }
    }
    let accepted = causes.get(cause::ACCEPTED).copied().unwrap_or_default();
    let mut unexplained = accepted.minus(billed);
    unexplained.amount = price(unexplained);
    metered.amount += billed.amount + unexplained.amount;
    if metered != Counted::default() {
        causes.insert(cause::METERED.into(), metered);
    }
    if unexplained != Counted::default() {
        causes.insert(cause::UNEXPLAINED.into(), unexplained);
    }
    causes
}

/// `amount × part ÷ whole`, exact to the amount's scale (zero when `whole` is).
fn share(amount: Amount, part: i128, whole: i128) -> Amount {
    if whole == 0 || part == 0 {
        return Amount::ZERO;
    }
    match amount.0.checked_mul(part) {
        Some(p) => Amount(p / whole),
        None => Amount(amount.0 / whole * part),
    }
}

/// Total rows: per (measure, cause, currency) over each period, and over everything. Rows of
/// no known currency (their amount is zero: nothing billed gives them a price) join the one
/// currency there is, if there is one.
fn totals(rows: &[Scored]) -> Vec<Scored> {
    let currencies: BTreeSet<&str> = rows
        .iter()
        .map(|r| r.currency.as_str())
        .filter(|c| !c.is_empty())
        .collect();
    let only = match currencies.len() {
        1 => currencies.first().copied().unwrap_or_default(),
        _ => "",
    };
    let mut sums: BTreeMap<(&'static str, String, Key, String), Counted> = BTreeMap::new();
    for r in rows {
        let currency = if r.currency.is_empty() {
            only
        } else {
            &r.currency
        };
        for period in [r.key.period.as_str(), ALL] {
            let key = Key::new(period, ALL, ALL);
            *sums
                .entry((r.measure, r.cause.clone(), key, currency.to_string()))
                .or_default() += r.counted;
        }
    }
    sums.into_iter()
        .map(|((measure, cause, key, currency), counted)| Scored {
            computed_at: EventTime::MIN,
            run_id: String::new(),
            measure,
            cause,
            key,
            currency,
            counted,
        })
        .collect()
}

/// `part ÷ whole` as a percentage with two decimals (`None` when nothing was metered).
pub fn percent(part: i128, whole: i128) -> Option<String> {
    if whole == 0 {
        return None;
    }
    let bp = (part * 10_000 + whole / 2).div_euclid(whole);
    Some(format!("{}.{:02}%", bp / 100, (bp % 100).abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(units: i64) -> Quantity {
        Quantity::from_units(units)
    }

    fn money(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    fn line(sku: &str, period: &str) -> IssuedLine {
        IssuedLine {
            customer_id: "acme".into(),
            contract_id: "acme-2026".into(),
            sku: sku.into(),
            region: "*".into(),
            service_period: period.into(),
        }
    }

    fn get<'a>(rows: &'a [Scored], measure: &str, cause: &str, key: &Key) -> Option<&'a Counted> {
        rows.iter()
            .find(|r| r.measure == measure && r.cause == cause && r.key == *key)
            .map(|r| &r.counted)
    }

    #[test]
    fn capture_counts_what_was_metered_and_prices_the_gap_at_the_line_average() {
        let mut s = Scorecard::default();
        let key = Key::new("2026-11", "acme", "api_calls");
        s.accepted(key.clone(), true, true, Counted::events(98, q(980)));
        s.accepted(key.clone(), true, false, Counted::events(1, q(10)));
        s.accepted(key.clone(), false, true, Counted::events(5, q(50)));
        s.rejected(key.clone(), "unit_mismatch", Counted::events(1, q(10)));
        s.rejected(
            Key::new("", "", ""),
            "malformed_json",
            Counted::events(3, q(0)),
        );
        s.duplicates(key.clone(), 7);
        // 970 units billed for 9.70: one event of 10 units is missing from the lines.
        let billed = Counted {
            events: 97,
            quantity: q(970),
            amount: money("9.7"),
        };
        s.line(
            key.clone(),
            line("api_calls", "2026-11"),
            "usage",
            "USD",
            billed,
        );
        let rows = s.rows(|_| true);
        let at = |cause| *get(&rows, CAPTURE, cause, &key).unwrap();
        let cost = |units| Counted::events(1, q(units));
        assert_eq!(
            at(cause::METERED),
            Counted {
                events: 100,
                quantity: q(1000),
                amount: money("10")
            }
        );
        assert_eq!(at(cause::BILLED), billed);
        assert_eq!(
            at("rejected:unit_mismatch"),
            Counted {
                amount: money("0.1"),
                ..cost(10)
            }
        );
        assert_eq!(
            at(cause::UNEXPLAINED),
            Counted {
                amount: money("0.1"),
                ..cost(10)
            }
        );
        assert_eq!(at(cause::DUPLICATE).events, 7);
        assert_eq!(at(cause::NON_BILLABLE).quantity, q(50));
        // The total over everything adds the payload nobody could attribute.
        let total = Key::new(ALL, ALL, ALL);
        let all = |cause| get(&rows, CAPTURE, cause, &total).map(|c| c.events);
        assert_eq!(all("rejected:malformed_json"), Some(3));
        assert_eq!(all(cause::METERED), Some(103));
        assert_eq!(percent(97, 103).as_deref(), Some("94.17%"));
    }

    #[test]
    fn a_line_changed_after_its_invoice_counts_once_with_each_cause() {
        let mut s = Scorecard::default();
        let nov = Key::new("2026-11", "acme", "api_calls");
        let dec = Key::new("2026-12", "acme", "api_calls");
        let usage = Counted {
            events: 10,
            quantity: q(100),
            amount: money("1"),
        };
        s.line(
            nov.clone(),
            line("api_calls", "2026-11"),
            "usage",
            "USD",
            usage,
        );
        s.line(
            nov.clone(),
            line("tokens", "2026-11"),
            "usage",
            "USD",
            usage,
        );
        let late = Counted {
            events: 1,
            quantity: q(10),
            amount: money("0.1"),
        };
        s.line(
            dec.clone(),
            line("api_calls", "2026-11"),
            "adjustment",
            "USD",
            late,
        );
        s.billed_later(line("api_calls", "2026-11"), false);
        s.billed_later(line("api_calls", "2026-11"), true);
        s.re_rated(line("tokens", "2026-11"));
        let rows = s.rows(|_| true);
        let total = Key::new("2026-11", ALL, ALL);
        let at = |cause| {
            get(&rows, INVOICE_ERROR, cause, &total)
                .copied()
                .unwrap_or_default()
        };
        assert_eq!(at(cause::ISSUED).events, 2);
        assert_eq!(at(cause::CHANGED).events, 2);
        assert_eq!(at(cause::CHANGED).amount, money("0.1"));
        assert_eq!(at(cause::LATE_USAGE).events, 1);
        assert_eq!(at(cause::CORRECTION).events, 1);
        assert_eq!(at(cause::RE_RATING).events, 1);
        // The adjustment is billed in December, for November's line.
        let dec_billed = get(&rows, CAPTURE, cause::BILLED, &dec).unwrap();
        assert_eq!(*dec_billed, late);
    }
}
