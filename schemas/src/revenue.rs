//! The revenue schedule (ASC 606 / IFRS 15): per contract, performance obligation and period,
//! what is billed, what is recognised as revenue, and the contract liability (deferred) and
//! contract asset (unbilled) between them. Computed from the current invoice lines; docs/revenue.md
//! explains each rule with a worked example.
//!
//! - **Usage** (`usage:<sku>`) is recognised as consumed, in its service period. Late usage of a
//!   closed period (an `adjustment` line) is recognised in the period that bills it, as a
//!   `catch_up` row naming the service period it belongs to.
//! - **Subscriptions** are recognised ratably by day over their service period. Each fee is an
//!   obligation of its own (`subscription:<fee>`): the invoice's subscription line is allocated
//!   across a contract's fees by their list prices, their standalone selling prices.
//! - **A ramp** (a fee whose price steps were agreed at signing) is one price for the contract's
//!   term: what it bills over the term is recognised on a straight line by its standalone
//!   selling price, and its obligation is stated as one position (asset or liability).
//! - **Commitment true-ups** are recognised when the shortfall is known: when the period closes.
//! - **Discounts and the spend cap** are allocated pro rata (by amount) to the obligations they
//!   apply to: a SKU's discount to that SKU's usage; an invoice discount to usage and
//!   subscription fees; the cap to usage. They are recognised with them.
//! - **Prepaid credit** is a contract liability: the prepayment opens it when the grant is made
//!   (obligation `prepaid credit:<grant>`, billed and deferred), the usage it pays for is
//!   recognised in full while the credit line draws the liability down (`deferred` < 0,
//!   obligation `prepaid credit`), and what a grant still holds when it expires is breakage,
//!   recognised once the last period it could pay for closes.
//! - **Promotional credit** (a grant marked `promotional`) was never paid for: it is a price
//!   concession, allocated like an invoice discount to what the invoice it pays bills (usage,
//!   subscriptions, true-ups), and opens no liability and leaves no breakage.
//! - **A material right** (a free grant the customer got for signing) is an obligation of its
//!   own: it takes a share of the fees by its standalone selling price, deferred, and is
//!   recognised as the grant is redeemed, or when it expires.
//! - **Tax** is not revenue and is left out.
//!
//! Which grant paid how much of each invoice's credit line follows from replaying the credit
//! lines in period order through the burn order pricing used
//! ([`burn`](crate::pricing::invoice::burn)).
//!
//! Invoices are issued when their period closes (meterflow bills in arrears): a closed period's
//! lines are `billed`; an open period's are drafts, and what is recognised of them so far is
//! `unbilled`. In every row `recognised + deferred = billed + unbilled`.

use std::collections::BTreeMap;

use crate::catalog::{CreditGrant, Term};
use crate::money::{Amount, Rounding};
use crate::pricing::invoice::{fees_billed, replay_credit, CreditReplay};
use crate::rows::LineKind;
use crate::time::{EventTime, PeriodUnit};

mod model;
mod term;

pub(crate) use model::share;
use model::{by_day, is_subscription};
pub use model::{Amounts, BilledLine, Schedule, ScheduleKey, Terms};
use term::{material_rights, ramp, Rights, Taken};

/// A row of the `revenue_schedule` table: a schedule row stated (`sign` 1) or retracted (-1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub computed_at: EventTime,
    pub run_id: String,
    pub key: ScheduleKey,
    pub amounts: Amounts,
    pub sign: i8,
}

/// The schedule the signed rows state now.
pub fn net(rows: &[Scheduled]) -> Schedule {
    let mut out = Schedule::new();
    for r in rows {
        let a = out.entry(r.key.clone()).or_default();
        let signed = |x: Amount| if r.sign < 0 { -x } else { x };
        a.add(Amounts {
            billed: signed(r.amounts.billed),
            recognised: signed(r.amounts.recognised),
            deferred: signed(r.amounts.deferred),
            unbilled: signed(r.amounts.unbilled),
        });
    }
    out.retain(|_, a| *a != Amounts::default());
    out
}

/// The accounts a period's journal entry posts to, in the order it lists them.
pub const ACCOUNTS: [&str; 4] = [
    "accounts receivable",
    "contract asset (unbilled receivable)",
    "contract liability (deferred revenue)",
    "revenue",
];

/// One line of a period's journal entry: an account, debited or credited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalLine {
    pub period: String,
    pub currency: String,
    pub account: &'static str,
    pub debit: Amount,
    pub credit: Amount,
}

/// The journal entry of each period (and currency) of `s`, all contracts: what was billed
/// debits accounts receivable, what is earned before it is billed debits the contract asset,
/// what is billed before it is earned credits the contract liability, and what is recognised
/// credits revenue (a negative amount swaps the side). Each entry balances because every row
/// does: billed + unbilled = recognised + deferred. Accounts that net to zero are left out.
pub fn journal(s: &Schedule, period: Option<&str>) -> Vec<JournalLine> {
    let mut by: BTreeMap<(&str, &str), [Amount; 4]> = BTreeMap::new();
    for (k, a) in s
        .iter()
        .filter(|(k, _)| period.is_none_or(|p| p == k.period))
    {
        let e = by.entry((&k.period, &k.currency)).or_default();
        // Debit-positive: receivable and asset are debits, liability and revenue credits.
        e[0] += a.billed;
        e[1] += a.unbilled;
        e[2] -= a.deferred;
        e[3] -= a.recognised;
    }
    let mut out = Vec::new();
    for ((period, currency), net) in by {
        for (account, x) in ACCOUNTS.iter().zip(net) {
            if x == Amount::ZERO {
                continue;
            }
            let (debit, credit) = if x > Amount::ZERO {
                (x, Amount::ZERO)
            } else {
                (Amount::ZERO, -x)
            };
            out.push(JournalLine {
                period: period.to_string(),
                currency: currency.to_string(),
                account,
                debit,
                credit,
            });
        }
    }
    out
}

/// Whether a row is a catch-up: revenue of a service period before the one it is recognised in.
pub fn is_catch_up(k: &ScheduleKey) -> bool {
    k.service_period < k.period
}

/// Spreads `amount` over `targets` pro rata to their amounts; the rounding remainder goes to the
/// largest, so the shares sum to `amount` exactly.
fn allocate(amount: Amount, targets: &mut [(&ScheduleKey, Amount)]) -> Vec<(ScheduleKey, Amount)> {
    let whole: Amount = targets.iter().map(|(_, a)| *a).sum();
    let mut out: Vec<(ScheduleKey, Amount)> = targets
        .iter()
        .map(|(k, a)| ((*k).clone(), share(amount, *a, whole)))
        .collect();
    let given: Amount = out.iter().map(|(_, a)| *a).sum();
    if let Some(largest) = targets
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, a))| (*a, usize::MAX - i))
        .map(|(i, _)| i)
    {
        out[largest].1 += amount - given;
    }
    out
}

/// Replays a contract's credit lines through pricing's burn order: what its promotional grants
/// paid of each invoice, and what each grant holds after the last.
fn replay(c: &Terms, lines: &[BilledLine], unit: PeriodUnit) -> CreditReplay {
    let mut used: BTreeMap<&str, Amount> = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l.kind == LineKind::Credit && l.contract == c.contract)
    {
        *used.entry(l.invoice_period.as_str()).or_default() -= l.amount;
    }
    replay_credit(c.grants, &used, unit, None)
}

/// The schedule of every contract and invoice period in `lines`, as of `as_of`: periods that
/// ended by then are closed (billed, fully recognised); the open ones are recognised so far.
/// `credits`: the contracts' credit grants (the lines' credit is taken as prepaid for a contract
/// not in it).
pub fn schedule(
    lines: &[BilledLine],
    terms: &[Terms],
    unit: PeriodUnit,
    as_of: EventTime,
) -> Schedule {
    let burnt: BTreeMap<&str, CreditReplay> = terms
        .iter()
        .map(|c| (c.contract.as_str(), replay(c, lines, unit)))
        .collect();
    let by_contract: BTreeMap<&str, &Terms> =
        terms.iter().map(|c| (c.contract.as_str(), c)).collect();
    let rights: BTreeMap<&str, Rights> = terms
        .iter()
        .filter_map(|c| Some((c.contract.as_str(), Rights::of(c, unit)?)))
        .collect();
    let mut taken = Taken::new();
    // The first period each contract is invoiced for: it bills the term running at its start.
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for l in lines {
        let f = first.entry(&l.contract).or_insert(&l.invoice_period);
        *f = (*f).min(&l.invoice_period);
    }
    let mut invoices: BTreeMap<(&str, &str, &str, &str), Vec<&BilledLine>> = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l.kind != LineKind::Tax && l.amount != Amount::ZERO)
    {
        invoices
            .entry((&l.customer, &l.contract, &l.invoice_period, &l.currency))
            .or_default()
            .push(l);
    }
    let mut out = Schedule::new();
    for ((customer, contract, period, currency), lines) in invoices {
        let Some(p) = unit.parse_label(period) else {
            continue;
        };
        let (start, end) = (p.0, unit.end_of(p));
        let closed = end <= as_of;
        let key = |obligation: String, service_period: &str| ScheduleKey {
            customer_id: customer.to_string(),
            contract_id: contract.to_string(),
            obligation,
            service_period: service_period.to_string(),
            period: period.to_string(),
            currency: currency.to_string(),
        };
        // The price of each obligation, before discounts and the cap.
        let mut price: BTreeMap<ScheduleKey, Amount> = BTreeMap::new();
        // The terms each term fee's obligation bills in this period.
        let mut terms_of: BTreeMap<ScheduleKey, Vec<Term>> = BTreeMap::new();
        // A fee of every period upgraded inside this one: where each part of what it bills
        // starts being served, and its standalone selling price.
        let mut parts_of: BTreeMap<ScheduleKey, Vec<(EventTime, Amount)>> = BTreeMap::new();
        let mut credit = Amount::ZERO;
        for l in &lines {
            let k = match l.kind {
                LineKind::Usage | LineKind::Adjustment => {
                    key(format!("usage:{}", l.sku), &l.service_period)
                }
                LineKind::Subscription => {
                    // One obligation per fee, the line allocated by the standalone selling
                    // price of what each fee bills in the period: prorated to the part of the
                    // period the contract runs, or of the terms starting in it.
                    let mut list: Vec<(ScheduleKey, Amount)> = Vec::new();
                    if let Some(c) = by_contract.get(contract) {
                        let first = first.get(contract) == Some(&period);
                        let fees = (c.fees, c.term_fees);
                        for mut fee in fees_billed(fees, c.span, (start, end), first) {
                            if fee.ramp {
                                // Within the period a ramp weighs in with what it bills; its
                                // value is spread over the contract's term by `ramp` below.
                                fee.ssp = fee.amount;
                                fee.parts.iter_mut().for_each(|p| p.ssp = p.amount);
                            }
                            let k = key(format!("subscription:{}", fee.name), &l.service_period);
                            if fee.in_advance && !fee.parts.is_empty() {
                                terms_of.entry(k.clone()).or_default().extend(fee.parts);
                            } else if fee.parts.len() > 1 {
                                let parts = fee.parts.iter().map(|p| (p.start, p.ssp));
                                parts_of.entry(k.clone()).or_default().extend(parts);
                            }
                            list.push((k, fee.ssp));
                        }
                    }
                    list.retain(|(_, a)| *a > Amount::ZERO);
                    let mut targets: Vec<(&ScheduleKey, Amount)> =
                        list.iter().map(|(k, a)| (k, *a)).collect();
                    if targets.is_empty() {
                        *price
                            .entry(key("subscription".into(), &l.service_period))
                            .or_default() += l.amount;
                    }
                    for (k, a) in allocate(l.amount, &mut targets) {
                        *price.entry(k).or_default() += a;
                    }
                    continue;
                }
                LineKind::Commitment => key("commitment true-up".into(), &l.service_period),
                LineKind::Credit => {
                    credit += l.amount;
                    continue;
                }
                _ => continue,
            };
            *price.entry(k).or_default() += l.amount;
        }
        // Discounts and the cap, allocated to what they apply to.
        let mut allocated = price.clone();
        for l in lines
            .iter()
            .filter(|l| matches!(l.kind, LineKind::Discount | LineKind::Cap))
        {
            let usage_of = |k: &ScheduleKey| k.obligation.starts_with("usage:");
            let applies = |k: &ScheduleKey| match (l.kind, l.sku.as_str()) {
                (LineKind::Cap, _) => usage_of(k),
                (_, "") => usage_of(k) || is_subscription(k),
                (_, sku) => k.obligation == format!("usage:{sku}"),
            };
            let mut targets: Vec<(&ScheduleKey, Amount)> = price
                .iter()
                .filter(|(k, a)| applies(k) && **a > Amount::ZERO)
                .map(|(k, a)| (k, *a))
                .collect();
            if targets.is_empty() {
                // Nothing it applies to bills anything: it stands as its own obligation.
                *allocated
                    .entry(key(l.kind.as_str().into(), &l.service_period))
                    .or_default() += l.amount;
                continue;
            }
            for (k, a) in allocate(l.amount, &mut targets) {
                *allocated.entry(k).or_default() += a;
            }
        }
        // Promotional credit lowers the price of what the invoice bills, like an invoice discount.
        // It never takes more than the credit line does.
        let free = burnt
            .get(contract)
            .and_then(|b| b.promotional.get(period))
            .map_or(Amount::ZERO, |f| (-*f).max(credit));
        if free != Amount::ZERO {
            credit -= free;
            let mut targets: Vec<(&ScheduleKey, Amount)> = allocated
                .iter()
                .filter(|(_, a)| **a > Amount::ZERO)
                .map(|(k, a)| (k, *a))
                .collect();
            let shares = if targets.is_empty() {
                vec![(key("promotional credit".into(), period), free)]
            } else {
                allocate(free, &mut targets)
            };
            for (k, a) in shares {
                *allocated.entry(k).or_default() += a;
            }
        }
        // A material right takes its share of what the fees bill (by standalone selling
        // price), deferred until it is redeemed.
        if let Some(r) = rights.get(contract) {
            let mut took = Amount::ZERO;
            for (_, x) in allocated.iter_mut().filter(|(k, _)| is_subscription(k)) {
                let take = r.take(*x);
                *x -= take;
                took += take;
            }
            if closed {
                *taken.entry((contract, period)).or_default() += took;
            }
        }
        for (k, x) in allocated {
            if let Some(terms) = terms_of.get(&k) {
                over_terms(&mut out, &k, x, terms, end, unit, as_of);
                continue;
            }
            let recognised = if closed {
                x
            } else if is_subscription(&k) {
                // Ratably by day: the whole days elapsed of the period, or of each part of an
                // upgraded fee from where it starts being served (its share of `x` by its
                // standalone selling price).
                let earned = |x: Amount, from: EventTime| by_day(x, (from, end), as_of);
                match parts_of.get(&k) {
                    None => earned(x, start),
                    Some(parts) => {
                        let whole: Amount = parts.iter().map(|p| p.1).sum();
                        parts
                            .iter()
                            .map(|&(from, ssp)| earned(share(x, ssp, whole), from))
                            .sum()
                    }
                }
            } else if k.obligation == "commitment true-up" {
                Amount::ZERO
            } else {
                x
            };
            let row = if closed {
                Amounts {
                    billed: x,
                    recognised,
                    deferred: Amount::ZERO,
                    unbilled: Amount::ZERO,
                }
            } else {
                Amounts {
                    billed: Amount::ZERO,
                    recognised,
                    deferred: Amount::ZERO,
                    unbilled: recognised,
                }
            };
            out.entry(k).or_default().add(row);
        }
        if credit != Amount::ZERO {
            // The usage credit pays for is recognised above; the credit draws the liability down.
            let row = if closed {
                Amounts {
                    billed: credit,
                    recognised: Amount::ZERO,
                    deferred: credit,
                    unbilled: Amount::ZERO,
                }
            } else {
                Amounts {
                    billed: Amount::ZERO,
                    recognised: Amount::ZERO,
                    deferred: credit,
                    unbilled: credit,
                }
            };
            out.entry(key("prepaid credit".into(), period))
                .or_default()
                .add(row);
        }
    }
    for c in terms {
        prepaid_credit(
            &mut out,
            c,
            &burnt[c.contract.as_str()].balances,
            unit,
            as_of,
        );
        let Some(first) = first.get(c.contract.as_str()) else {
            continue;
        };
        let r = rights.get(c.contract.as_str());
        ramp(&mut out, c, first, r, unit, as_of);
        if let Some(r) = r {
            let paid = &burnt[c.contract.as_str()].paid;
            material_rights(&mut out, c, r, (first, &taken, paid), unit, as_of);
        }
    }
    out.retain(|_, a| *a != Amounts::default());
    out
}

/// Adds the rows of a term fee's obligation `k` to `out`: `x` (its share of the subscription
/// line of the invoice period ending at `end`, after discounts) is billed there in advance, and
/// recognised ratably by day over its `terms`. The billing period recognises the days of the
/// terms elapsed by its end (a term billed late, in a contract's first invoice, catches up
/// there), and holds the rest as a contract liability (`deferred`); each later period of the
/// terms recognises its days and draws the liability down, as a row of its own (that period
/// is its service period). An open billing period is a draft: what is recognised of it so far
/// is unbilled, and nothing is deferred yet.
fn over_terms(
    out: &mut Schedule,
    k: &ScheduleKey,
    x: Amount,
    terms: &[Term],
    end: EventTime,
    unit: PeriodUnit,
    as_of: EventTime,
) {
    // Each term's share of `x` (by its standalone selling price; the remainder to the last), ...
    let whole: Amount = terms.iter().map(|t| t.ssp).sum();
    let mut parts: Vec<Amount> = terms.iter().map(|t| share(x, t.ssp, whole)).collect();
    let given: Amount = parts.iter().copied().sum();
    if let Some(last) = parts.last_mut() {
        *last += x - given;
    }
    // ... and what of it is recognised by `at`, by the term's days elapsed.
    let by = |at: EventTime| -> Amount {
        let at = at.min(as_of);
        terms
            .iter()
            .zip(&parts)
            .map(|(t, &of_x)| by_day(of_x, (t.start, t.end), at))
            .sum()
    };
    let recognised = by(end);
    let row = if end <= as_of {
        Amounts {
            billed: x,
            recognised,
            deferred: x - recognised,
            unbilled: Amount::ZERO,
        }
    } else {
        Amounts {
            recognised,
            unbilled: recognised,
            ..Amounts::default()
        }
    };
    out.entry(k.clone()).or_default().add(row);
    if end > as_of {
        return;
    }
    let last = terms.iter().map(|t| t.end).max().unwrap_or(end);
    let mut from = end;
    for _ in 0..12_000 {
        if from >= last || from >= as_of {
            break;
        }
        let p = unit.period_of(from);
        let to = unit.end_of(p);
        let drawn = by(to) - by(from);
        if drawn != Amount::ZERO {
            let label = unit.label(p);
            let later = ScheduleKey {
                service_period: label.clone(),
                period: label,
                ..k.clone()
            };
            let row = Amounts {
                recognised: drawn,
                deferred: -drawn,
                ..Amounts::default()
            };
            out.entry(later).or_default().add(row);
        }
        from = to;
    }
}

/// Adds the opening and the end of each prepaid credit liability to `out` (the drawdown is in
/// the invoices' credit lines):
/// - the grant, in the period it is granted in, as of its grant time: billed and deferred (the
///   prepayment is invoiced when the grant is made, and owed back as service);
/// - its breakage: what the grant still holds when it expires, recognised (and the liability
///   released) in the last period it could pay for, once that period closed.
fn prepaid_credit(
    out: &mut Schedule,
    c: &Terms,
    left: &[Amount],
    unit: PeriodUnit,
    as_of: EventTime,
) {
    let mut add = |grant: &CreditGrant, period: crate::time::Period, amounts: Amounts| {
        let label = unit.label(period);
        out.entry(ScheduleKey {
            customer_id: c.customer.clone(),
            contract_id: c.contract.clone(),
            obligation: format!("prepaid credit:{}", grant.name),
            service_period: label.clone(),
            period: label,
            currency: c.currency.clone(),
        })
        .or_default()
        .add(amounts);
    };
    for (grant, left) in c.grants.iter().zip(left) {
        if grant.promotional || grant.granted > as_of || grant.amount == Amount::ZERO {
            continue;
        }
        let opened = Amounts {
            billed: grant.amount,
            deferred: grant.amount,
            ..Amounts::default()
        };
        add(grant, unit.period_of(grant.granted), opened);
        let Some(expires) = grant.expires else {
            continue;
        };
        // The last period that could use it: the one holding the instant before it expires.
        let last = unit.period_of(EventTime(expires.0 - 1));
        if *left > Amount::ZERO && unit.end_of(last) <= as_of && expires > grant.granted {
            let breakage = Amounts {
                recognised: *left,
                deferred: -*left,
                ..Amounts::default()
            };
            add(grant, last, breakage);
        }
    }
}

/// What a contract has yet to recognise of what it is contracted to pay for, as of a time:
/// its remaining performance obligations (ASC 606-10-50-13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remaining {
    pub customer: String,
    pub contract: String,
    pub currency: String,
    /// All of it.
    pub total: Amount,
    /// What of it is expected to be recognised within the horizon.
    pub within: Amount,
}

/// A row of the `remaining_obligations` table: what remained of a contract as of a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obligated {
    pub computed_at: EventTime,
    pub run_id: String,
    pub as_of: EventTime,
    pub remaining: Remaining,
}

/// The remaining performance obligations of each contract as of `as_of`: what its fees (and
/// material rights) have billed or will bill up to the contract's end, less what the schedule
/// of `lines` as of then (`now`) has recognised of them, and the part the schedule expects to
/// recognise within `months`. The invoices to come are each later period's subscription line at list price,
/// rounded to `digits(currency)`; a contract without an end is committed to its invoice periods
/// as they come, so what remains of it is what its open period has yet to earn. Usage is left
/// out: variable consideration, recognised as it is used (ASC 606-10-50-14(b)). So are
/// true-ups, and credit the invoices to come might use.
pub fn remaining(
    lines: &[BilledLine],
    terms: &[Terms],
    now: &Schedule,
    unit: PeriodUnit,
    as_of: EventTime,
    months: u32,
    digits: impl Fn(&str) -> u32,
) -> Vec<Remaining> {
    let mut all = lines.to_vec();
    // A time by which every period there is, or will be, has ended.
    let mut last_end = lines
        .iter()
        .filter_map(|l| unit.parse_label(&l.invoice_period))
        .chain([unit.period_of(as_of)])
        .map(|p| unit.end_of(p))
        .max()
        .unwrap_or(as_of);
    for c in terms {
        let Some(until) = c.span.1 else { continue };
        // After the last period invoiced so far, and after the one `as_of` falls in; a contract
        // not invoiced yet (signed, not started) from its first period, or the open one.
        let last = lines
            .iter()
            .filter(|l| l.contract == c.contract)
            .filter_map(|l| unit.parse_label(&l.invoice_period))
            .max();
        let from = match last {
            Some(last) => unit.period_of(unit.end_of(last.max(unit.period_of(as_of)))),
            None => unit.period_of(c.span.0.max(as_of)),
        };
        for p in unit.periods(from, until) {
            let end = unit.end_of(p);
            let first = last.is_none() && p == from;
            let fees = fees_billed((c.fees, c.term_fees), c.span, (p.0, end), first);
            let amount: Amount = fees.iter().map(|f| f.amount).sum();
            let label = unit.label(p);
            all.push(BilledLine {
                customer: c.customer.clone(),
                contract: c.contract.clone(),
                invoice_period: label.clone(),
                service_period: label,
                kind: LineKind::Subscription,
                sku: String::new(),
                amount: amount.round_to(digits(&c.currency), Rounding::HalfEven),
                currency: c.currency.clone(),
            });
            last_end = last_end.max(end);
        }
    }
    // What the contracts' fees and rights have recognised by each time.
    let fixed = |s: &Schedule| {
        let mut by: BTreeMap<(String, String, String), Amount> = BTreeMap::new();
        for (k, a) in s
            .iter()
            .filter(|(k, _)| is_subscription(k) || k.obligation.starts_with("material right:"))
        {
            let key = (
                k.customer_id.clone(),
                k.contract_id.clone(),
                k.currency.clone(),
            );
            *by.entry(key).or_default() += a.recognised;
        }
        by
    };
    let now = fixed(now);
    let soon = fixed(&schedule(&all, terms, unit, as_of.plus_months(months)));
    let over = fixed(&schedule(&all, terms, unit, last_end));
    over.into_iter()
        .map(|((customer, contract, currency), by_end)| {
            let key = (customer.clone(), contract.clone(), currency.clone());
            let so_far = now.get(&key).copied().unwrap_or_default();
            let by_then = soon.get(&key).copied().unwrap_or_default();
            Remaining {
                customer,
                contract,
                currency,
                total: by_end - so_far,
                within: by_then - so_far,
            }
        })
        .filter(|r| r.total != Amount::ZERO)
        .collect()
}

/// What a schedule changes against the one recorded before: `(key, amounts, sign)` rows that
/// retract a recorded row (`-1`, its amounts) and state the new one (`+1`). `recorded`: the net
/// of the signed rows written before; `only`: restrict to one period.
pub fn changes(
    recorded: &Schedule,
    now: &Schedule,
    only: Option<&str>,
) -> Vec<(ScheduleKey, Amounts, i8)> {
    let keeps = |k: &ScheduleKey| only.is_none_or(|p| p == k.period);
    let mut out = Vec::new();
    for (k, was) in recorded.iter().filter(|(k, _)| keeps(k)) {
        if now.get(k) != Some(was) && *was != Amounts::default() {
            out.push((k.clone(), *was, -1));
        }
    }
    for (k, is) in now.iter().filter(|(k, _)| keeps(k)) {
        if recorded.get(k) != Some(is) {
            out.push((k.clone(), *is, 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::model::mul_div;
    use super::*;
    use crate::catalog::{Fee, TermFee};

    fn line(kind: LineKind, sku: &str, period: &str, service: &str, amount: &str) -> BilledLine {
        BilledLine {
            customer: "acme".into(),
            contract: "acme-1".into(),
            invoice_period: period.into(),
            service_period: service.into(),
            kind,
            sku: sku.into(),
            amount: Amount::parse(amount).unwrap(),
            currency: "USD".into(),
        }
    }

    fn t(s: &str) -> EventTime {
        EventTime::parse_rfc3339(s).unwrap()
    }

    fn total<'a>(rows: impl Iterator<Item = &'a Amounts>) -> Amounts {
        rows.fold(Amounts::default(), |mut a, x| {
            a.add(*x);
            a
        })
    }

    fn get(s: &Schedule, obligation: &str, period: &str) -> Amounts {
        total(
            s.iter()
                .filter(|(k, _)| k.obligation == obligation && k.period == period)
                .map(|(_, a)| a),
        )
    }

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn a_closed_month_recognises_what_it_bills_with_discounts_allocated() {
        let lines = [
            line(LineKind::Usage, "tokens", "2026-10", "2026-10", "300"),
            line(LineKind::Usage, "api", "2026-10", "2026-10", "100"),
            line(LineKind::Subscription, "", "2026-10", "2026-10", "50"),
            line(LineKind::Discount, "tokens", "2026-10", "2026-10", "-30"),
            line(LineKind::Discount, "", "2026-10", "2026-10", "-45"),
            line(LineKind::Tax, "", "2026-10", "2026-10", "70"),
        ];
        let s = schedule(&lines, &[], PeriodUnit::Month, t("2026-11-05T00:00:00Z"));
        // tokens: 300 − 30 − 45 × 300/450 = 240; api: 100 − 10 = 90; subscription: 50 − 5 = 45.
        assert_eq!(get(&s, "usage:tokens", "2026-10").recognised, a("240"));
        assert_eq!(get(&s, "usage:api", "2026-10").recognised, a("90"));
        assert_eq!(get(&s, "subscription", "2026-10").recognised, a("45"));
        let total: Amount = s.values().map(|x| x.billed).sum();
        assert_eq!(total, a("375"), "the invoice's net, tax excluded");
        assert!(s.values().all(Amounts::balances));
    }

    #[test]
    fn each_fee_is_an_obligation_allocated_by_its_list_price() {
        // Platform 40 and support 20 a month, prorated to half of October: a 30 line. The
        // invoice discount of 12 goes to usage 90 and the fees 30 by amount: 9 and 3.
        let fees = [Fee::new("platform", a("40")), Fee::new("support", a("20"))];
        let terms = [Terms {
            customer: "acme".into(),
            contract: "acme-1".into(),
            currency: "USD".into(),
            span: (t("2026-10-01T00:00:00Z"), None),
            grants: &[],
            fees: &fees,
            term_fees: &[],
        }];
        let lines = [
            line(LineKind::Usage, "tokens", "2026-10", "2026-10", "90"),
            line(LineKind::Subscription, "", "2026-10", "2026-10", "30"),
            line(LineKind::Discount, "", "2026-10", "2026-10", "-12"),
        ];
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2026-11-05T00:00:00Z"));
        assert_eq!(
            get(&s, "subscription:platform", "2026-10").recognised,
            a("18")
        );
        assert_eq!(
            get(&s, "subscription:support", "2026-10").recognised,
            a("9")
        );
        assert_eq!(get(&s, "usage:tokens", "2026-10").recognised, a("81"));
        assert_eq!(get(&s, "subscription", "2026-10"), Amounts::default());
        // Open, ten whole days of November's thirty: each fee by day, each exact to 18 digits.
        let open = [line(LineKind::Subscription, "", "2026-11", "2026-11", "60")];
        let s = schedule(&open, &terms, PeriodUnit::Month, t("2026-11-11T06:00:00Z"));
        let platform = get(&s, "subscription:platform", "2026-11");
        let support = get(&s, "subscription:support", "2026-11");
        assert_eq!(platform.recognised, a("13.333333333333333333"));
        assert_eq!(support.recognised, a("6.666666666666666666"));
        assert_eq!(
            platform.unbilled + support.unbilled,
            a("19.999999999999999999")
        );
        assert!(s.values().all(Amounts::balances));
    }

    /// A contract from 1 October 2026 with `fees` and `term_fees`.
    fn bundle<'a>(fees: &'a [Fee], term_fees: &'a [TermFee]) -> Terms<'a> {
        Terms {
            customer: "acme".into(),
            contract: "acme-1".into(),
            currency: "USD".into(),
            span: (t("2026-10-01T00:00:00Z"), None),
            grants: &[],
            fees,
            term_fees,
        }
    }

    #[test]
    fn a_fee_in_a_bundle_takes_its_share_by_its_standalone_selling_price() {
        // Platform 100 a month includes onboarding help, which bills nothing but sells for 25
        // on its own: the 100 line is 80 platform and 20 onboarding. The invoice discount of
        // 20 then goes to usage 100, platform 80 and onboarding 20 by amount: 10, 8 and 2.
        let fees = [
            Fee::new("platform", a("100")),
            Fee {
                ramp: false,
                name: "onboarding".into(),
                amount: Amount::ZERO,
                ssp: a("25"),
                changes: vec![],
            },
        ];
        let lines = [
            line(LineKind::Usage, "tokens", "2026-10", "2026-10", "100"),
            line(LineKind::Subscription, "", "2026-10", "2026-10", "100"),
            line(LineKind::Discount, "", "2026-10", "2026-10", "-20"),
        ];
        let s = schedule(
            &lines,
            &[bundle(&fees, &[])],
            PeriodUnit::Month,
            t("2026-11-05T00:00:00Z"),
        );
        let recognised = |o: &str| get(&s, o, "2026-10").recognised;
        assert_eq!(recognised("subscription:platform"), a("72"));
        assert_eq!(recognised("subscription:onboarding"), a("18"));
        assert_eq!(recognised("usage:tokens"), a("90"));
        assert!(s.values().all(Amounts::balances));
        // Sold at list prices (no ssp), the bundled fee would earn nothing.
        let list = [
            Fee::new("platform", a("100")),
            Fee::new("onboarding", Amount::ZERO),
        ];
        let s = schedule(
            &lines,
            &[bundle(&list, &[])],
            PeriodUnit::Month,
            t("2026-11-05T00:00:00Z"),
        );
        assert_eq!(
            get(&s, "subscription:platform", "2026-10").recognised,
            a("90")
        );
        assert_eq!(
            get(&s, "subscription:onboarding", "2026-10"),
            Amounts::default()
        );
    }

    #[test]
    fn a_term_included_in_a_monthly_fee_is_deferred_over_its_term_by_its_share() {
        // Platform 146 a month includes a year of training from 1 October that sells for 584
        // on its own. October bills 146: platform 146 x 146/730 = 29.2, training 116.8, which
        // is recognised by day over the year's 365 days (0.32 a day) and deferred until then.
        // November bills 146 again, all platform: its training term started in October.
        let fees = [Fee::new("platform", a("146"))];
        let training = [TermFee {
            ssp: a("584"),
            ..TermFee::new("training", Amount::ZERO, 12, t("2026-10-01T00:00:00Z"))
        }];
        let lines = [
            line(LineKind::Subscription, "", "2026-10", "2026-10", "146"),
            line(LineKind::Subscription, "", "2026-11", "2026-11", "146"),
        ];
        let s = schedule(
            &lines,
            &[bundle(&fees, &training)],
            PeriodUnit::Month,
            t("2026-12-05T00:00:00Z"),
        );
        assert_eq!(
            get(&s, "subscription:platform", "2026-10").recognised,
            a("29.2")
        );
        let october = get(&s, "subscription:training", "2026-10");
        assert_eq!(
            (october.billed, october.recognised, october.deferred),
            (a("116.8"), a("9.92"), a("106.88"))
        );
        assert_eq!(
            get(&s, "subscription:platform", "2026-11").recognised,
            a("146")
        );
        let november = get(&s, "subscription:training", "2026-11");
        assert_eq!(
            (november.billed, november.recognised, november.deferred),
            (Amount::ZERO, a("9.6"), a("-9.6"))
        );
        assert!(s.values().all(Amounts::balances));
    }

    #[test]
    fn an_upgrade_mid_term_is_billed_when_it_happens_and_recognised_over_the_rest_of_the_term() {
        // 365 a year from 1 October 2026 (one a day), upgraded to 730 on 1 April 2027 with 183
        // of the term's 365 days left: April bills 183 more, recognised at one more a day
        // until the term ends on 1 October.
        let support = [TermFee {
            changes: vec![crate::catalog::FeeChange {
                from: t("2027-04-01T00:00:00Z"),
                amount: a("730"),
                ssp: a("730"),
            }],
            ..TermFee::new("support", a("365"), 12, t("2026-10-01T00:00:00Z"))
        }];
        let lines = [
            line(LineKind::Subscription, "", "2026-10", "2026-10", "365"),
            line(LineKind::Subscription, "", "2027-04", "2027-04", "183"),
        ];
        let s = schedule(
            &lines,
            &[bundle(&[], &support)],
            PeriodUnit::Month,
            t("2027-10-05T00:00:00Z"),
        );
        let march = get(&s, "subscription:support", "2027-03");
        assert_eq!((march.billed, march.recognised), (Amount::ZERO, a("31")));
        // April: 30 days of the term and 30 of the upgrade; the upgrade's other 153 deferred.
        let april = get(&s, "subscription:support", "2027-04");
        assert_eq!(
            (april.billed, april.recognised, april.deferred),
            (a("183"), a("60"), a("123"))
        );
        let may = get(&s, "subscription:support", "2027-05");
        assert_eq!((may.recognised, may.deferred), (a("62"), a("-62")));
        // By the term's end, all of what it billed is recognised and nothing stays deferred.
        let all = total(s.values());
        assert_eq!(
            (all.billed, all.recognised, all.deferred),
            (a("548"), a("548"), Amount::ZERO)
        );
        assert!(s.values().all(Amounts::balances));
    }

    #[test]
    fn an_upgrade_inside_an_open_month_earns_from_the_upgrade_on() {
        // 30 a month from 1 October, 60 from 11 November: November bills 30 + 30 x 20/30 = 50.
        // As of the 21st, the 30 has earned 20 of its 30 days (20) and the upgrade's 20 has
        // earned 10 of its 20 days (10): 30, not 50 x 20/30.
        let fees = [Fee {
            changes: vec![crate::catalog::FeeChange {
                from: t("2026-11-11T00:00:00Z"),
                amount: a("60"),
                ssp: a("60"),
            }],
            ..Fee::new("platform", a("30"))
        }];
        let lines = [line(LineKind::Subscription, "", "2026-11", "2026-11", "50")];
        let terms = [bundle(&fees, &[])];
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2026-11-21T00:00:00Z"));
        let november = get(&s, "subscription:platform", "2026-11");
        assert_eq!((november.recognised, november.unbilled), (a("30"), a("30")));
        // Closed, all of it.
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2026-12-02T00:00:00Z"));
        assert_eq!(
            get(&s, "subscription:platform", "2026-11").recognised,
            a("50")
        );
    }

    #[test]
    fn an_open_month_recognises_usage_as_consumed_and_the_fee_by_day() {
        let lines = [
            line(LineKind::Usage, "tokens", "2026-11", "2026-11", "90"),
            line(LineKind::Subscription, "", "2026-11", "2026-11", "30"),
            line(LineKind::Commitment, "", "2026-11", "2026-11", "500"),
            line(LineKind::Adjustment, "tokens", "2026-11", "2026-10", "12"),
        ];
        let s = schedule(&lines, &[], PeriodUnit::Month, t("2026-11-10T12:00:00Z"));
        let usage = get(&s, "usage:tokens", "2026-11");
        assert_eq!(
            (usage.billed, usage.recognised, usage.unbilled),
            (Amount::ZERO, a("102"), a("102"))
        );
        // Nine whole days of thirty.
        assert_eq!(get(&s, "subscription", "2026-11").recognised, a("9"));
        assert_eq!(get(&s, "commitment true-up", "2026-11"), Amounts::default());
        let catch_up: Vec<_> = s.keys().filter(|k| is_catch_up(k)).collect();
        assert_eq!(catch_up.len(), 1);
        assert_eq!(catch_up[0].service_period, "2026-10");
        assert!(s.values().all(Amounts::balances));
    }

    #[test]
    fn prepaid_credit_draws_the_liability_down_and_revenue_stays_whole() {
        let lines = [
            line(LineKind::Usage, "tokens", "2026-10", "2026-10", "400"),
            line(LineKind::Credit, "", "2026-10", "2026-10", "-150"),
        ];
        let s = schedule(&lines, &[], PeriodUnit::Month, t("2026-12-01T00:00:00Z"));
        assert_eq!(get(&s, "usage:tokens", "2026-10").recognised, a("400"));
        let c = get(&s, "prepaid credit", "2026-10");
        assert_eq!((c.billed, c.deferred), (a("-150"), a("-150")));
        let sum = total(s.values());
        assert_eq!(
            (sum.recognised, sum.deferred, sum.billed),
            (a("400"), a("-150"), a("250"))
        );
    }

    /// A contract from 1 January 2026 to `until`, with `fees` and `term_fees`.
    fn committed<'a>(fees: &'a [Fee], term_fees: &'a [TermFee], until: &str) -> Terms<'a> {
        Terms {
            span: (t("2026-01-01T00:00:00Z"), Some(t(until))),
            ..bundle(fees, term_fees)
        }
    }

    /// Each month of `year` (`"2026"`) and its subscription line (`amount(month)`, 1-based).
    fn monthly(year: &str, amount: impl Fn(u32) -> &'static str) -> Vec<BilledLine> {
        (1..=12)
            .map(|m| {
                let p = format!("{year}-{m:02}");
                line(LineKind::Subscription, "", &p, &p, amount(m))
            })
            .collect()
    }

    fn in_year(s: &Schedule, obligation: &str, year: &str) -> Amounts {
        total(
            s.iter()
                .filter(|(k, _)| k.obligation == obligation && k.period.starts_with(year))
                .map(|(_, a)| a),
        )
    }

    /// Support for three years from 1 January 2026 at 100, 120 and 140 a year, billed in
    /// advance each year, the steps agreed at signing (each sells for 100: the same service).
    fn three_year_ramp() -> TermFee {
        let step = |from: &str, amount: &str| crate::catalog::FeeChange {
            from: t(from),
            amount: a(amount),
            ssp: a("100"),
        };
        TermFee {
            name: "support".into(),
            amount: a("100"),
            ssp: a("100"),
            months: 12,
            anchor: t("2026-01-01T00:00:00Z"),
            until: Some(t("2029-01-01T00:00:00Z")),
            changes: vec![
                step("2027-01-01T00:00:00Z", "120"),
                step("2028-01-01T00:00:00Z", "140"),
            ],
            ramp: true,
        }
    }

    #[test]
    fn a_ramp_agreed_at_signing_is_recognised_on_a_straight_line_over_the_term() {
        // Three years from 1 January 2026: support 100 the first year, 120 the second, 140
        // the third, billed in advance each year, the steps agreed at signing; platform 50 a
        // month besides. The 360 of support is one price for the three years: 120 a year.
        let support = [three_year_ramp()];
        let fees = [Fee::new("platform", a("50"))];
        let terms = [committed(&fees, &support, "2029-01-01T00:00:00Z")];
        let mut lines = Vec::new();
        for (year, support) in [("2026", "150"), ("2027", "170"), ("2028", "190")] {
            lines.extend(monthly(year, |m| if m == 1 { support } else { "50" }));
        }
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2029-01-05T00:00:00Z"));
        assert!(s.values().all(Amounts::balances));
        let year = |y| in_year(&s, "subscription:support", y);
        let zero = Amount::ZERO;
        // The first year earns 20 more than it bills: a contract asset, unwound in the third.
        assert_eq!(
            (year("2026").billed, year("2026").recognised),
            (a("100"), a("120"))
        );
        assert_eq!(
            (year("2026").unbilled, year("2026").deferred),
            (a("20"), zero)
        );
        assert_eq!(
            (
                year("2027").billed,
                year("2027").recognised,
                year("2027").unbilled
            ),
            (a("120"), a("120"), zero)
        );
        assert_eq!(
            (
                year("2028").billed,
                year("2028").recognised,
                year("2028").unbilled
            ),
            (a("140"), a("120"), a("-20"))
        );
        // By day within a year: January 2026 earns 120 x 31/365.
        assert_eq!(
            get(&s, "subscription:support", "2026-01").recognised,
            a("10.191780821917808218")
        );
        // The other fee earns what it bills, every month: a ramp weighs in with its amount.
        for period in ["2026-01", "2027-01", "2028-01", "2028-06"] {
            assert_eq!(get(&s, "subscription:platform", period).recognised, a("50"));
        }
        // Midway the year's 100, billed in advance, is still ahead of the 120 x 181/365 earned:
        // one position, a liability, not a liability beside an asset.
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2026-07-01T00:00:00Z"));
        let half = in_year(&s, "subscription:support", "2026");
        assert!(half.recognised > a("59.50") && half.recognised < a("59.51"));
        assert_eq!(
            (half.deferred, half.unbilled),
            (a("100") - half.recognised, Amount::ZERO)
        );
        // The 100 pays for 304 days at 120 a year: the liability runs out in November, which
        // starts the asset.
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2026-12-01T00:00:00Z"));
        let november = get(&s, "subscription:support", "2026-11");
        assert!(november.deferred < Amount::ZERO && november.unbilled > Amount::ZERO);
        assert_eq!(november.unbilled - november.deferred, november.recognised);
    }

    /// What remains of `terms` as of `as_of`, 12 months ahead, in cents.
    fn remaining_as_of(lines: &[BilledLine], terms: &[Terms], as_of: EventTime) -> Vec<Remaining> {
        let now = schedule(lines, terms, PeriodUnit::Month, as_of);
        remaining(lines, terms, &now, PeriodUnit::Month, as_of, 12, |_| 2)
    }

    #[test]
    fn what_remains_is_what_the_fees_will_bill_less_what_they_have_earned() {
        // The three-year ramp (support 100, 120, 140 a year) as of 1 July 2026, with the
        // first year's invoice in: 360 in all, 120 x 181/365 earned, 120 due in the next
        // twelve months (a year of its straight line).
        let support = [three_year_ramp()];
        let terms = [committed(&[], &support, "2029-01-01T00:00:00Z")];
        let lines = [line(
            LineKind::Subscription,
            "",
            "2026-01",
            "2026-01",
            "100",
        )];
        let as_of = t("2026-07-01T00:00:00Z");
        let left = remaining_as_of(&lines, &terms, as_of);
        assert_eq!(left.len(), 1);
        let s = schedule(&lines, &terms, PeriodUnit::Month, as_of);
        let earned = total(s.values()).recognised;
        assert!(earned > a("59.50") && earned < a("59.51"), "{earned}");
        assert_eq!(left[0].total, a("360") - earned);
        let year = left[0].within - a("120");
        assert!(year.0.abs() < 1000, "{:?}", left[0]);
        // Without the ramp: 300.41 remains too, but the next twelve months bring the rest of
        // the first term (100 x 184/365) and 181 days of the second (120 x 181/365).
        let list = [TermFee {
            ramp: false,
            ..support[0].clone()
        }];
        let terms = [committed(&[], &list, "2029-01-01T00:00:00Z")];
        let left = remaining_as_of(&lines, &terms, as_of);
        let earned = total(schedule(&lines, &terms, PeriodUnit::Month, as_of).values()).recognised;
        assert_eq!(left[0].total, a("360") - earned);
        assert!(
            left[0].within > a("109.9") && left[0].within < a("110"),
            "{:?}",
            left[0]
        );
        // Signed, not started (as of 15 November 2025): all of it remains, and the first
        // term's days to 15 November 2026 (318 of 365) fall within 12 months.
        let left = remaining_as_of(&[], &terms, t("2025-11-15T00:00:00Z"));
        assert_eq!(left[0].total, a("360"));
        assert_eq!(left[0].within, Amount(mul_div(a("100").0, 318, 365)));
        // A contract without an end owes what its open period has yet to earn.
        let fees = [Fee::new("platform", a("30"))];
        let terms = [bundle(&fees, &[])];
        let open = [line(LineKind::Subscription, "", "2026-11", "2026-11", "30")];
        let left = remaining_as_of(&open, &terms, t("2026-11-11T00:00:00Z"));
        assert_eq!((left[0].total, left[0].within), (a("20"), a("20")));
    }

    #[test]
    fn a_monthly_ramp_earns_its_average_every_month_free_months_included() {
        // A year from 1 January 2026: 10 a month, then 20 from July: 180, 15 a month.
        let ramp = |amount: &str, from: &str, to: &str| Fee {
            changes: vec![crate::catalog::FeeChange {
                from: t(from),
                amount: a(to),
                ssp: a(amount),
            }],
            ramp: true,
            ..Fee::new("platform", a(amount))
        };
        let fees = [ramp("10", "2026-07-01T00:00:00Z", "20")];
        let terms = [committed(&fees, &[], "2027-01-01T00:00:00Z")];
        let lines = monthly("2026", |m| if m <= 6 { "10" } else { "20" });
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2027-01-05T00:00:00Z"));
        let month = |p| get(&s, "subscription:platform", p);
        let jan = month("2026-01");
        assert_eq!(
            (jan.billed, jan.recognised, jan.unbilled),
            (a("10"), a("15"), a("5"))
        );
        let jul = month("2026-07");
        assert_eq!(
            (jul.billed, jul.recognised, jul.unbilled),
            (a("20"), a("15"), a("-5"))
        );
        let all = total(s.values());
        assert_eq!((all.billed, all.recognised), (a("180"), a("180")));
        assert_eq!((all.unbilled, all.deferred), (Amount::ZERO, Amount::ZERO));
        assert!(s.values().all(Amounts::balances));
        // Three months free, then 40: 360 over twelve months, 30 each, free ones included
        // (they have no invoice line: the ramp's rows are their own).
        let fees = [ramp("0", "2026-04-01T00:00:00Z", "40")];
        let fees = [Fee {
            ssp: a("40"),
            changes: vec![crate::catalog::FeeChange {
                ssp: a("40"),
                ..fees[0].changes[0]
            }],
            ..fees[0].clone()
        }];
        let terms = [committed(&fees, &[], "2027-01-01T00:00:00Z")];
        let lines = monthly("2026", |m| if m <= 3 { "0" } else { "40" });
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2027-01-05T00:00:00Z"));
        for p in ["2026-01", "2026-03", "2026-04", "2026-12"] {
            assert_eq!(
                get(&s, "subscription:platform", p).recognised,
                a("30"),
                "{p}"
            );
        }
        let march = get(&s, "subscription:platform", "2026-03");
        assert_eq!((march.billed, march.unbilled), (Amount::ZERO, a("30")));
        assert!(s.values().all(Amounts::balances));
        // Without the ramp, each month earns what it bills.
        let list = [Fee {
            ramp: false,
            ..fees[0].clone()
        }];
        let terms = [committed(&list, &[], "2027-01-01T00:00:00Z")];
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2027-01-05T00:00:00Z"));
        assert_eq!(
            get(&s, "subscription:platform", "2026-03"),
            Amounts::default()
        );
        assert_eq!(
            get(&s, "subscription:platform", "2026-04").recognised,
            a("40")
        );
    }

    #[test]
    fn a_material_right_takes_its_share_of_the_fees_and_is_recognised_as_it_is_redeemed() {
        // 2026, platform 100 a month (1200 over the term), and a free 300 the customer got for
        // signing: a material right, worth 300 on its own. It takes 300 / (1200 + 300) = 20%
        // of what the fees bill. The credit pays January to March (100 each), so those fees
        // earn nothing themselves; the right is recognised as it is redeemed, a third a month,
        // of the 20% of April to December's fees it will take (180): 60 a month.
        let fees = [Fee::new("platform", a("100"))];
        let right = |redemption: &str| CreditGrant {
            material_right: Some(crate::money::UnitPrice::parse(redemption).unwrap()),
            promotional: true,
            ..grant(
                "welcome",
                "300",
                0,
                "2026-01-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            )
        };
        let grants = [right("1")];
        let terms = [Terms {
            grants: &grants,
            ..committed(&fees, &[], "2027-01-01T00:00:00Z")
        }];
        let mut lines = monthly("2026", |_| "100");
        for p in ["2026-01", "2026-02", "2026-03"] {
            lines.push(line(LineKind::Credit, "", p, p, "-100"));
        }
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2027-01-05T00:00:00Z"));
        assert!(s.values().all(Amounts::balances));
        let right_in = |p| get(&s, "material right:welcome", p);
        let platform = |p| get(&s, "subscription:platform", p).recognised;
        assert_eq!(platform("2026-01"), Amount::ZERO);
        // January: the right is a third redeemed, of the 220 it then expects to take.
        let jan = right_in("2026-01");
        assert_eq!(
            (jan.billed, jan.recognised, jan.unbilled),
            (
                Amount::ZERO,
                a("73.333333333333333333"),
                a("73.333333333333333333")
            )
        );
        let by_march: Amount = ["2026-01", "2026-02", "2026-03"]
            .iter()
            .map(|p| right_in(p).recognised)
            .sum();
        assert_eq!(by_march, a("180"));
        // April on: the fee earns 80, the right takes 20 of what it bills, and the asset its
        // early recognition left is paid down.
        assert_eq!(platform("2026-04"), a("80"));
        let apr = right_in("2026-04");
        assert_eq!(
            (apr.billed, apr.recognised, apr.unbilled),
            (a("20"), Amount::ZERO, a("-20"))
        );
        let all = total(s.values());
        assert_eq!((all.billed, all.recognised), (a("900"), a("900")));
        assert_eq!((all.deferred, all.unbilled), (Amount::ZERO, Amount::ZERO));
        // As a price concession instead, the fees earn what they bill after the credit.
        let concession = [CreditGrant {
            material_right: None,
            ..grants[0].clone()
        }];
        let terms = [Terms {
            grants: &concession,
            ..committed(&fees, &[], "2027-01-01T00:00:00Z")
        }];
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2027-01-05T00:00:00Z"));
        assert_eq!(
            get(&s, "subscription:platform", "2026-04").recognised,
            a("100")
        );
        assert!(!s.keys().any(|k| k.obligation.starts_with("material right")));
        // Half of it expected to be redeemed: worth 150, it takes 150 / 1350 of the fees. By
        // February 150 is redeemed: all it expects (1/9 of February to December's 1000) is
        // recognised. March's fee is paid by the grant too, so the right takes nothing of it:
        // the estimate falls to 1/9 of 900, and March recognises the difference back.
        let grants = [right("0.5")];
        let terms = [Terms {
            grants: &grants,
            ..committed(&fees, &[], "2027-01-01T00:00:00Z")
        }];
        let s = schedule(&lines, &terms, PeriodUnit::Month, t("2027-01-05T00:00:00Z"));
        let right_in = |p| get(&s, "material right:welcome", p).recognised;
        let by_february = right_in("2026-01") + right_in("2026-02");
        assert_eq!(by_february, a("111.111111111111111111"));
        assert_eq!(right_in("2026-03"), a("100") - by_february);
        let all = total(s.values());
        assert_eq!((all.billed, all.recognised), (a("900"), a("900")));
        assert!(s.values().all(Amounts::balances));
    }

    /// A contract's fee, as the property test draws it: its price, whether its steps are a
    /// ramp, and its changes (days after the contract's start, new amount).
    type DrawnFee = (u32, bool, Vec<(u32, u32)>);

    /// The fee a [`DrawnFee`] describes, as the catalog loader would build it: a free fee
    /// sells for 15, a ramp's step keeps the standalone selling price before it.
    fn drawn_changes(
        (amount, ramp, changes): &DrawnFee,
        after: EventTime,
        until: EventTime,
    ) -> (Amount, Amount, Vec<crate::catalog::FeeChange>) {
        let price = |x: u32| Amount::parse_price(&x.to_string()).unwrap();
        let ssp = if *amount == 0 {
            price(15)
        } else {
            price(*amount)
        };
        let mut out: Vec<crate::catalog::FeeChange> = Vec::new();
        let day = 86_400_000;
        for &(days, to) in changes {
            let from = EventTime(after.0 + i64::from(days) * day);
            if from >= until || out.last().is_some_and(|c| c.from >= from) {
                continue;
            }
            let before = out.last().map_or(ssp, |c| c.ssp);
            let to_ssp = match (*ramp, to) {
                (true, _) => before,
                (false, 0) => price(15),
                (false, x) => price(x),
            };
            out.push(crate::catalog::FeeChange {
                from,
                amount: price(to),
                ssp: to_ssp,
            });
        }
        (price(*amount), ssp, out)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any contract with fees (changed, ramped, billed every period or per term), usage, an
        /// invoice discount and a free grant (a concession or a material right): every row
        /// balances at any time,
        /// and once the contract is over every obligation has recognised exactly what it
        /// billed, leaving no contract asset or liability.
        #[test]
        fn every_obligation_recognises_exactly_what_it_bills_by_the_end(
            months in 3u32..=24,
            fee in (proptest::sample::select(vec![0u32, 10, 49, 100, 250]), proptest::bool::ANY,
                    proptest::collection::vec((1u32..700, proptest::sample::select(vec![0u32, 20, 75, 300])), 0..3)),
            term in proptest::option::of((
                proptest::sample::select(vec![1u32, 3, 12]),
                0u32..3,
                (proptest::sample::select(vec![120u32, 1200]), proptest::bool::ANY,
                 proptest::collection::vec((1u32..700, proptest::sample::select(vec![60u32, 2400])), 0..2)),
            )),
            free in proptest::option::of((
                proptest::sample::select(vec![100u32, 300, 1000]),
                proptest::sample::select(vec!["", "1", "0.5"]),
            )),
            usage in proptest::collection::vec(0u32..400, 24),
            discount in proptest::bool::ANY,
            as_of_day in 0u32..800,
        ) {
            let start = t("2026-01-01T00:00:00Z");
            let until = start.plus_months(months);
            let (amount, ssp, changes) = drawn_changes(&fee, start, until);
            let fees = [Fee { amount, ssp, changes, ramp: fee.1, ..Fee::new("platform", amount) }];
            let term_fees: Vec<TermFee> = term
                .iter()
                .filter_map(|(months_per, offset, drawn)| {
                    let anchor = start.plus_months(*offset);
                    (anchor < until).then(|| {
                        let (amount, ssp, changes) = drawn_changes(drawn, anchor, until);
                        TermFee {
                            name: "support".into(),
                            amount,
                            ssp,
                            months: *months_per,
                            anchor,
                            until: Some(until),
                            changes,
                            ramp: drawn.1,
                        }
                    })
                })
                .collect();
            let grants: Vec<CreditGrant> = free
                .iter()
                .map(|(amount, redemption)| CreditGrant {
                    promotional: true,
                    material_right: (!redemption.is_empty())
                        .then(|| crate::money::UnitPrice::parse(redemption).unwrap()),
                    ..grant("welcome", &amount.to_string(), 0, "2026-01-01T00:00:00Z", "2030-01-01T00:00:00Z")
                })
                .collect();
            let terms = [Terms {
                grants: &grants,
                span: (start, Some(until)),
                ..bundle(&fees, &term_fees)
            }];
            // The invoices pricing would make: the fees (rounded once per line), the usage, and
            // the credit burnt against both.
            let unit = PeriodUnit::Month;
            let mut lines = Vec::new();
            let mut balances: Vec<Amount> = grants.iter().map(|g| g.amount).collect();
            let mut p = unit.period_of(start);
            let mut k = 0;
            while p.0 < until {
                let end = unit.end_of(p);
                let label = unit.label(p);
                let billed: Amount = fees_billed((&fees, &term_fees), terms[0].span, (p.0, end), k == 0)
                    .iter()
                    .map(|f| f.amount)
                    .sum();
                let subscription = billed.round_to(2, crate::money::Rounding::HalfUp);
                let used = Amount::parse_price(&usage[k].to_string()).unwrap();
                // 10% off the invoice, some contracts.
                let off = match discount {
                    true => -(subscription + used).times_fraction(crate::money::UnitPrice::parse("0.1").unwrap()),
                    false => Amount::ZERO,
                };
                let credit = crate::pricing::invoice::burn(&grants, &mut balances, p.0, subscription + used + off);
                for (kind, x) in [(LineKind::Subscription, subscription), (LineKind::Usage, used), (LineKind::Discount, off), (LineKind::Credit, -credit)] {
                    let sku = if kind == LineKind::Usage { "tokens" } else { "" };
                    lines.push(BilledLine { amount: x, ..line(kind, sku, &label, &label, "0") });
                }
                p = unit.period_of(end);
                k += 1;
            }
            let day = 86_400_000;
            let some_time = EventTime(start.0 + i64::from(as_of_day) * day);
            let s = schedule(&lines, &terms, unit, some_time);
            proptest::prop_assert!(s.values().all(Amounts::balances), "{:?}", s);
            let over = schedule(&lines, &terms, unit, unit.end_of(unit.period_of(until)));
            proptest::prop_assert!(over.values().all(Amounts::balances));
            let mut by: BTreeMap<&str, Amounts> = BTreeMap::new();
            for (k, a) in &over {
                by.entry(k.obligation.as_str()).or_default().add(*a);
            }
            let billed: Amount = lines.iter().map(|l| l.amount).sum();
            let all = total(over.values());
            proptest::prop_assert_eq!(all.billed, billed);
            for (obligation, a) in by {
                proptest::prop_assert_eq!(a.recognised, a.billed, "{}", obligation);
                proptest::prop_assert_eq!((a.deferred, a.unbilled), (Amount::ZERO, Amount::ZERO), "{}", obligation);
            }
        }
    }

    fn grant(name: &str, amount: &str, priority: u32, granted: &str, expires: &str) -> CreditGrant {
        CreditGrant {
            name: name.into(),
            amount: a(amount),
            priority,
            granted: t(granted),
            expires: Some(t(expires)),
            promotional: false,
            material_right: None,
        }
    }

    /// The schedule of a contract from 1 January 2026 whose only fee is 365 a year (one a day),
    /// billed in advance, as of `as_of`, from its subscription `lines`.
    fn annual(lines: &[(&str, &str)], as_of: &str) -> Schedule {
        let fee = [TermFee::new(
            "support",
            a("365"),
            12,
            t("2026-01-01T00:00:00Z"),
        )];
        let terms = [Terms {
            customer: "acme".into(),
            contract: "acme-1".into(),
            currency: "USD".into(),
            span: (t("2026-01-01T00:00:00Z"), None),
            grants: &[],
            fees: &[],
            term_fees: &fee,
        }];
        let lines: Vec<BilledLine> = lines
            .iter()
            .map(|(period, amount)| line(LineKind::Subscription, "", period, period, amount))
            .collect();
        schedule(&lines, &terms, PeriodUnit::Month, t(as_of))
    }

    fn at(s: &Schedule, period: &str) -> (Amount, Amount, Amount, Amount) {
        let x = get(s, "subscription:support", period);
        (x.billed, x.recognised, x.deferred, x.unbilled)
    }

    #[test]
    fn an_annual_fee_billed_in_advance_is_deferred_and_recognised_by_day_over_its_term() {
        let s = annual(&[("2026-01", "365")], "2026-04-10T00:00:00Z");
        let z = Amount::ZERO;
        // January bills the year and earns its 31 days; the rest is a contract liability.
        assert_eq!(at(&s, "2026-01"), (a("365"), a("31"), a("334"), z));
        // Each later month earns its days out of the liability.
        assert_eq!(at(&s, "2026-02"), (z, a("28"), a("-28"), z));
        assert_eq!(at(&s, "2026-03"), (z, a("31"), a("-31"), z));
        // April is open: the 9 whole days elapsed by the 10th.
        assert_eq!(at(&s, "2026-04"), (z, a("9"), a("-9"), z));
        assert!(s.values().all(Amounts::balances));
        let deferred: Amount = s.values().map(|x| x.deferred).sum();
        assert_eq!(deferred, a("266"), "the liability left: 365 - 99 days");
        // After the term, everything is recognised and nothing deferred.
        let s = annual(&[("2026-01", "365")], "2027-01-05T00:00:00Z");
        let recognised: Amount = s.values().map(|x| x.recognised).sum();
        assert_eq!(recognised, a("365"));
        assert_eq!(s.values().map(|x| x.deferred).sum::<Amount>(), z);
        assert_eq!(at(&s, "2026-12"), (z, a("31"), a("-31"), z));
    }

    #[test]
    fn a_term_billed_late_catches_up_the_days_already_served() {
        // The first invoice is March's: it bills the term that started on 1 January, and
        // recognises January and February's days with March's.
        let s = annual(&[("2026-03", "365")], "2026-04-01T00:00:00Z");
        assert_eq!(
            at(&s, "2026-03"),
            (a("365"), a("90"), a("275"), Amount::ZERO)
        );
        // While March is open, its draft line is unbilled as far as it is earned.
        let s = annual(&[("2026-03", "365")], "2026-03-11T00:00:00Z");
        assert_eq!(
            at(&s, "2026-03"),
            (Amount::ZERO, a("69"), Amount::ZERO, a("69"))
        );
        assert_eq!(s.len(), 1, "nothing after an open billing period: {s:?}");
    }

    fn credits(grants: &[CreditGrant]) -> [Terms<'_>; 1] {
        [Terms {
            customer: "acme".into(),
            contract: "acme-1".into(),
            currency: "USD".into(),
            span: (t("2026-01-01T00:00:00Z"), None),
            grants,
            fees: &[],
            term_fees: &[],
        }]
    }

    /// September, October and November invoices paid in full by credit.
    fn paid_by_credit() -> Vec<BilledLine> {
        vec![
            line(LineKind::Usage, "tokens", "2026-09", "2026-09", "40"),
            line(LineKind::Credit, "", "2026-09", "2026-09", "-40"),
            line(LineKind::Usage, "tokens", "2026-10", "2026-10", "300"),
            line(LineKind::Usage, "api", "2026-10", "2026-10", "100"),
            line(LineKind::Credit, "", "2026-10", "2026-10", "-400"),
            line(LineKind::Usage, "tokens", "2026-11", "2026-11", "200"),
            line(LineKind::Credit, "", "2026-11", "2026-11", "-200"),
        ]
    }

    #[test]
    fn promotional_credit_lowers_the_price_of_what_it_pays_and_opens_no_liability() {
        // A free 100 (burns first) and a prepaid 1 000.
        let mut promo = grant(
            "promo",
            "100",
            0,
            "2026-09-01T00:00:00Z",
            "2026-11-01T00:00:00Z",
        );
        promo.promotional = true;
        let prepaid = grant(
            "prepaid",
            "1000",
            1,
            "2026-09-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        );
        let grants = [promo.clone(), prepaid];
        let lines = paid_by_credit();
        let s = schedule(
            &lines,
            &credits(&grants),
            PeriodUnit::Month,
            t("2027-01-01T00:00:00Z"),
        );
        assert!(s.values().all(Amounts::balances));
        // September: the promotion paid all 40, so the usage earned nothing and nothing is owed.
        assert_eq!(get(&s, "usage:tokens", "2026-09").recognised, a("0"));
        assert_eq!(get(&s, "prepaid credit", "2026-09"), Amounts::default());
        // October: the promotion's other 60 lowers tokens and api pro rata (300:100), the prepaid
        // grant draws its liability down by the remaining 340.
        assert_eq!(get(&s, "usage:tokens", "2026-10").recognised, a("255"));
        assert_eq!(get(&s, "usage:api", "2026-10").recognised, a("85"));
        let drawn = get(&s, "prepaid credit", "2026-10");
        assert_eq!((drawn.billed, drawn.deferred), (a("-340"), a("-340")));
        // The promotion opens no liability and leaves no breakage.
        assert!(s.keys().all(|k| k.obligation != "prepaid credit:promo"));
        assert_eq!(
            get(&s, "prepaid credit:prepaid", "2026-12").recognised,
            a("1000") - a("340") - a("200")
        );

        // Free credit alone: it pays everything, it earns nothing, and the 360 it held at expiry
        // is not revenue either.
        promo.amount = a("1000");
        promo.expires = Some(t("2027-01-01T00:00:00Z"));
        let only = [promo];
        let s = schedule(
            &lines,
            &credits(&only),
            PeriodUnit::Month,
            t("2027-01-01T00:00:00Z"),
        );
        let sum = total(s.values());
        assert_eq!(
            (sum.billed, sum.recognised, sum.deferred),
            (a("0"), a("0"), a("0"))
        );
        assert!(s
            .keys()
            .all(|k| !k.obligation.starts_with("prepaid credit")));
    }

    #[test]
    fn a_grant_opens_the_liability_and_what_it_holds_at_expiry_is_breakage() {
        // Two grants in burn order: "promo" (expires with October) burns before "prepaid".
        let grants = [
            grant(
                "promo",
                "100",
                0,
                "2026-09-01T00:00:00Z",
                "2026-11-01T00:00:00Z",
            ),
            grant(
                "prepaid",
                "1000",
                1,
                "2026-09-15T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
        ];
        let lines = [
            line(LineKind::Usage, "tokens", "2026-09", "2026-09", "40"),
            line(LineKind::Credit, "", "2026-09", "2026-09", "-40"),
            line(LineKind::Usage, "tokens", "2026-10", "2026-10", "500"),
            line(LineKind::Credit, "", "2026-10", "2026-10", "-500"),
            line(LineKind::Usage, "tokens", "2026-11", "2026-11", "200"),
            line(LineKind::Credit, "", "2026-11", "2026-11", "-200"),
        ];
        let at = |as_of: &str| schedule(&lines, &credits(&grants), PeriodUnit::Month, t(as_of));
        // Mid-September: "prepaid" is granted, "promo" has not expired, September is open.
        let s = at("2026-09-20T00:00:00Z");
        let promo = get(&s, "prepaid credit:promo", "2026-09");
        assert_eq!((promo.billed, promo.deferred), (a("100"), a("100")));
        assert_eq!(
            get(&s, "prepaid credit:prepaid", "2026-09").deferred,
            a("1000")
        );
        assert_eq!(
            get(&s, "prepaid credit:promo", "2026-10"),
            Amounts::default()
        );
        // After October: promo paid 40 in September and 60 of October's 500, so nothing is left of
        // it; "prepaid" paid October's other 440.
        let s = at("2026-12-31T00:00:00Z");
        assert_eq!(
            get(&s, "prepaid credit:promo", "2026-10"),
            Amounts::default()
        );
        // "prepaid" expires with December, which has not closed yet: no breakage yet.
        assert_eq!(
            get(&s, "prepaid credit:prepaid", "2026-12"),
            Amounts::default()
        );
        // Once December closed, the 360 it still holds (1000 - 440 - 200) is recognised.
        let s = at("2027-01-01T00:00:00Z");
        let b = get(&s, "prepaid credit:prepaid", "2026-12");
        assert_eq!(
            (b.recognised, b.deferred, b.billed),
            (a("360"), a("-360"), a("0"))
        );
        // The liability nets to zero and every row balances.
        let credit = total(
            s.iter()
                .filter(|(k, _)| k.obligation.starts_with("prepaid credit"))
                .map(|(_, a)| a),
        );
        assert_eq!(credit.deferred, a("0"));
        assert_eq!(credit.billed, a("1100") - a("740"));
        assert!(s.values().all(Amounts::balances));
    }

    #[test]
    fn each_period_posts_a_balanced_journal_entry() {
        // A prepayment granted in September, usage it pays in October, and an open November.
        let k = |obligation: &str, period: &str| ScheduleKey {
            customer_id: "c".into(),
            contract_id: "k".into(),
            obligation: obligation.into(),
            service_period: period.into(),
            period: period.into(),
            currency: "USD".into(),
        };
        let row = |b: &str, r: &str, d: &str, u: &str| Amounts {
            billed: a(b),
            recognised: a(r),
            deferred: a(d),
            unbilled: a(u),
        };
        let s: Schedule = [
            (
                k("prepaid credit:p", "2026-09"),
                row("1000", "0", "1000", "0"),
            ),
            (k("usage:tokens", "2026-10"), row("300", "300", "0", "0")),
            (
                k("prepaid credit", "2026-10"),
                row("-300", "0", "-300", "0"),
            ),
            (k("usage:tokens", "2026-11"), row("0", "120", "0", "120")),
        ]
        .into_iter()
        .collect();
        let j = journal(&s, None);
        let lines = |p: &str| -> Vec<(&str, Amount, Amount)> {
            j.iter()
                .filter(|l| l.period == p)
                .map(|l| (l.account, l.debit, l.credit))
                .collect()
        };
        let z = Amount::ZERO;
        assert_eq!(
            lines("2026-09"),
            [
                ("accounts receivable", a("1000"), z),
                ("contract liability (deferred revenue)", z, a("1000"))
            ]
        );
        // The invoice nets to nothing: the liability pays for the revenue.
        assert_eq!(
            lines("2026-10"),
            [
                ("contract liability (deferred revenue)", a("300"), z),
                ("revenue", z, a("300"))
            ]
        );
        assert_eq!(
            lines("2026-11"),
            [
                ("contract asset (unbilled receivable)", a("120"), z),
                ("revenue", z, a("120"))
            ]
        );
        assert_eq!(journal(&s, Some("2026-11")).len(), 2);
    }

    #[test]
    fn wide_multiplication_divides_exactly() {
        let big = 45 * 10i128.pow(18);
        assert_eq!(
            mul_div(big, 300 * 10i128.pow(18), 450 * 10i128.pow(18)),
            30 * 10i128.pow(18)
        );
        assert_eq!(mul_div(-7, 3, 2), -10);
        assert_eq!(mul_div(i128::MAX, 3, 3), i128::MAX);
    }

    #[test]
    fn a_change_retracts_the_row_it_replaces() {
        let before = schedule(
            &[line(LineKind::Usage, "tokens", "2026-11", "2026-11", "90")],
            &[],
            PeriodUnit::Month,
            t("2026-11-10T00:00:00Z"),
        );
        let after = schedule(
            &[line(LineKind::Usage, "tokens", "2026-11", "2026-11", "60")],
            &[],
            PeriodUnit::Month,
            t("2026-11-10T00:00:00Z"),
        );
        let c = changes(&before, &after, None);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].1.recognised, c[0].2), (a("90"), -1));
        assert_eq!((c[1].1.recognised, c[1].2), (a("60"), 1));
        assert!(changes(&after, &after, None).is_empty());
        // A line voided away entirely: only the retraction.
        let c = changes(&before, &Schedule::new(), None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].2, -1);
    }
}
