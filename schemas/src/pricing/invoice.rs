//! The invoice-level lines of one contract in one invoice period, derived from its usage lines:
//! subscription fees, discounts, the commitment true-up, the spend cap and tax.
//!
//! Rules (the contract with finance, see `docs/pricing.md`):
//! - Everything is computed from the **rounded** amounts of the lines it applies to (what the
//!   invoice shows), and each derived line is rounded once, to the currency's minor unit. So
//!   the invoice adds up: with a commitment, the total is exactly the minimum spend.
//! - Order: subscription fees; then discounts per SKU (on that SKU's usage and adjustment
//!   lines); then invoice-wide discounts (on usage, adjustments and fees net of SKU discounts);
//!   then the commitment true-up (up to `minimum_spend`); then the cap (down to
//!   `maximum_spend`); then prepaid credits; then tax on the net of all of the above.
//! - Credits burn across a contract's invoice periods in period order: each period uses the
//!   grants usable in it (granted at or before its start, expiring after it), by priority, then
//!   earliest expiry, never more than the period's net. What a period uses is gone for the
//!   periods after it.
//! - A discount never takes more than the amount it applies to, and never applies to a negative
//!   amount. Discounts apply to invoice periods that start inside their `from`..`until` range.
//! - Lines worth zero are not emitted.
//! - Proration: in an invoice period the contract is active for only part of (it starts or ends
//!   inside it), subscription fees, the minimum spend and the maximum spend are scaled by the
//!   active share of the period (`active time / period length`, exact to 18 digits, half up),
//!   before rounding. Discounts, credits and tax are not scaled: they follow the amounts.

use std::collections::BTreeMap;

use crate::catalog::{
    Catalog, ContractIdx, ContractTerms, CreditGrant, DiscountOff, Fee, SkuIdx, Tax, Term, TermFee,
};
use crate::money::{minor_unit_digits, Amount, Rounding};
use crate::rows::LineKind;
use crate::time::{EventTime, Period, PeriodUnit};

/// One derived line: its kind, the SKU it concerns ([`SkuIdx::INVOICE`] for the whole invoice),
/// its exact amount and its amount rounded to the minor unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DerivedLine {
    pub kind: LineKind,
    pub sku: SkuIdx,
    pub amount_exact: Amount,
    pub amount: Amount,
}

/// The derived lines of every invoice period of one contract (by period start), from the
/// rounded amounts of their usage and adjustment lines by SKU; credits carry from period to
/// period.
pub fn contract_lines(
    terms: &ContractTerms,
    tax: Option<&Tax>,
    periods: &BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>>,
    unit: PeriodUnit,
    digits: u32,
    rounding: Rounding,
) -> Vec<(EventTime, DerivedLine)> {
    contract_lines_prorated(terms, tax, periods, unit, ALWAYS, digits, rounding)
}

/// The span of a contract that runs in every period.
const ALWAYS: (EventTime, Option<EventTime>) = (EventTime::MIN, None);

/// The part of an invoice period a contract is active in, when it is not all of it:
/// `(active, length)` in milliseconds.
pub type Share = Option<(i128, i128)>;

/// The active share of the period `[start, end)` for a contract running `[starts, ends)`.
pub fn active_share(
    starts: EventTime,
    ends: Option<EventTime>,
    start: EventTime,
    end: EventTime,
) -> Share {
    let from = starts.max(start);
    let to = ends.map_or(end, |e| e.min(end));
    let (active, length) = ((to.0 - from.0).max(0) as i128, (end.0 - start.0) as i128);
    (length > 0 && active < length).then_some((active, length))
}

pub fn prorated(a: Amount, share: Share) -> Amount {
    match share {
        None => a,
        Some((active, length)) => Amount((a.0 * active + length / 2).div_euclid(length)),
    }
}

/// As [`contract_lines`] for a contract running `span` (from, until): fees and spend limits
/// are prorated to the part of each period it runs. Term fees are billed in the periods their
/// terms start in, and the first period also bills the term running at its start
/// ([`TermFee::billed_in`]).
pub fn contract_lines_prorated(
    terms: &ContractTerms,
    tax: Option<&Tax>,
    periods: &BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>>,
    unit: PeriodUnit,
    span: (EventTime, Option<EventTime>),
    digits: u32,
    rounding: Rounding,
) -> Vec<(EventTime, DerivedLine)> {
    let mut balances: Vec<Amount> = terms.credits.iter().map(|g| g.amount).collect();
    let mut out = Vec::new();
    let first = periods.keys().next().copied();
    for (start, usage) in periods {
        let end = unit.end_of(Period(*start));
        let p = PeriodContext {
            start: *start,
            share: active_share(span.0, span.1, *start, end),
            fees: fees_due(terms, (*start, end), span),
            term_fees: term_fees_due(terms, *start, end, first == Some(*start)),
        };
        for line in period_lines(terms, tax, p, usage, digits, rounding, &mut balances) {
            out.push((*start, line));
        }
    }
    out
}

/// A contract's invoice-level lines, as the pipeline bills them: `periods` holds the rounded
/// amounts of its usage and adjustment lines per invoice period (by start) and SKU, `through`
/// the invoice period the stream has reached. Every period from the first with usage through
/// `through` is invoiced while the contract is active in it, so a period without usage still
/// bills its fees and its commitment. Contracts without usage have no invoice-level lines.
pub fn contract_invoice(
    catalog: &Catalog,
    contract: ContractIdx,
    mut periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>>,
    through: Option<Period>,
    currency: &str,
    unit: PeriodUnit,
    rounding: Rounding,
) -> Vec<(EventTime, DerivedLine)> {
    let c = &catalog.contracts[contract.ix()];
    let share =
        |start: EventTime| active_share(c.starts, c.ends, start, unit.end_of(Period(start)));
    let span = (c.starts, c.ends);
    if let (Some(&first), Some(through)) = (periods.keys().next(), through) {
        let mut start = first;
        for _ in 0..1200 {
            if start > through.0 {
                break;
            }
            if !matches!(share(start), Some((0, _))) {
                periods.entry(start).or_default();
            }
            start = unit.end_of(Period(start));
        }
    }
    let tax = catalog.customers[c.customer.ix()]
        .tax
        .map(|t| &catalog.taxes[t.ix()]);
    let digits = minor_unit_digits(currency);
    contract_lines_prorated(&c.terms, tax, &periods, unit, span, digits, rounding)
}

/// What one fee of a contract bills in an invoice period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeeBilled<'a> {
    pub name: &'a str,
    /// Exact: the subscription line rounds the sum of a period's fees once.
    pub amount: Amount,
    /// Its standalone selling price for what it bills, prorated like `amount`.
    pub ssp: Amount,
    /// What it bills, part by part (`amount` is their sum): for a fee of every period, the
    /// period at its starting price, then each upgrade inside it ([`Fee::parts`]); for a fee
    /// billed in advance, the terms (and upgrades of terms) it bills in the period.
    pub parts: Vec<Term>,
    /// A fee billed in advance per term (its parts are terms, recognised over them).
    pub in_advance: bool,
    /// A ramp ([`Fee::ramp`]): its price steps were agreed at signing.
    pub ramp: bool,
}

/// What each fee bills in the invoice period `[start, end)` of a contract running `span`
/// (`first`: the first period it is invoiced for): a fee of every period its price prorated to
/// the part of the period the contract runs ([`Fee::billed`]), a fee billed in advance the
/// terms it bills there ([`TermFee::billed_in`]). Their sum is what the subscription line bills before rounding.
pub fn fees_billed<'a>(
    (fees, term_fees): (&'a [Fee], &'a [TermFee]),
    span: (EventTime, Option<EventTime>),
    (start, end): (EventTime, EventTime),
    first: bool,
) -> Vec<FeeBilled<'a>> {
    let billed = |name: &'a str, parts: Vec<Term>, in_advance: bool, ramp: bool| FeeBilled {
        name,
        amount: parts.iter().map(|p| p.amount).sum(),
        ssp: parts.iter().map(|p| p.ssp).sum(),
        parts,
        in_advance,
        ramp,
    };
    let every_period = fees
        .iter()
        .map(|f| billed(&f.name, f.parts((start, end), span), false, f.ramp));
    let in_advance = term_fees
        .iter()
        .map(|f| billed(&f.name, f.billed_in(start, end, first), true, f.ramp));
    every_period.chain(in_advance).collect()
}

/// What the fees of every period of `terms` bill in the invoice period `[start, end)` of a
/// contract running `span` ([`Fee::billed`]).
pub fn fees_due(
    terms: &ContractTerms,
    period: (EventTime, EventTime),
    span: (EventTime, Option<EventTime>),
) -> Amount {
    terms.fees.iter().map(|f| f.billed(period, span).0).sum()
}

/// What the term fees of `terms` bill in the invoice period `[start, end)`; `first`: the first
/// period the contract is invoiced for.
pub fn term_fees_due(
    terms: &ContractTerms,
    start: EventTime,
    end: EventTime,
    first: bool,
) -> Amount {
    terms
        .term_fees
        .iter()
        .map(|f| f.due(start, end, first))
        .sum()
}

/// Which invoice period, how much of it the contract is active in, and what its term fees bill
/// in it.
#[derive(Clone, Copy)]
struct PeriodContext {
    start: EventTime,
    share: Share,
    /// What its fees of every period bill ([`fees_due`]).
    fees: Amount,
    term_fees: Amount,
}

/// Takes up to `wanted` from the grants usable in the period starting at `period_start`, in
/// burn order (`grants` are sorted by priority, then earliest expiry); returns what it took.
/// `balances` holds what is left of each grant.
pub fn burn(
    grants: &[CreditGrant],
    balances: &mut [Amount],
    period_start: EventTime,
    wanted: Amount,
) -> Amount {
    let mut used = Amount::ZERO;
    for (grant, balance) in grants.iter().zip(balances.iter_mut()) {
        let left = wanted - used;
        if left <= Amount::ZERO {
            break;
        }
        if grant.usable_in(period_start) && *balance > Amount::ZERO {
            let take = if *balance < left { *balance } else { left };
            *balance -= take;
            used += take;
        }
    }
    used
}

/// As [`burn`]; returns what each grant paid (in the grants' order) instead.
fn burn_each(
    grants: &[CreditGrant],
    balances: &mut [Amount],
    period_start: EventTime,
    wanted: Amount,
) -> Vec<Amount> {
    let before = balances.to_vec();
    burn(grants, balances, period_start, wanted);
    before
        .iter()
        .zip(balances.iter())
        .map(|(b, a)| *b - *a)
        .collect()
}

/// What the promotional grants of `grants` paid of `paid` (what each grant paid).
fn promotional_of(grants: &[CreditGrant], paid: &[Amount]) -> Amount {
    grants
        .iter()
        .zip(paid)
        .filter(|(g, _)| g.promotional)
        .map(|(_, x)| *x)
        .sum()
}

/// As [`burn`]; also returns what the promotional grants paid of what it took.
pub fn burn_split(
    grants: &[CreditGrant],
    balances: &mut [Amount],
    period_start: EventTime,
    wanted: Amount,
) -> (Amount, Amount) {
    let paid = burn_each(grants, balances, period_start, wanted);
    (paid.iter().copied().sum(), promotional_of(grants, &paid))
}

/// A contract's credit grants after replaying the credit its invoices used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreditReplay {
    /// What each grant holds after the last period replayed (in the grants' order).
    pub balances: Vec<Amount>,
    /// The last period replayed: its label and start.
    pub last: Option<(String, Period)>,
    /// Credit used since the first period that used any, and how many periods that is.
    pub burnt: Amount,
    pub burning: i128,
    /// What the promotional grants paid of each period's credit, by label (periods where they
    /// paid something).
    pub promotional: BTreeMap<String, Amount>,
    /// What each grant paid of each period's credit (in the grants' order), by label.
    pub paid: BTreeMap<String, Vec<Amount>>,
}

/// Burns `used` (credit taken per invoice period label, positive) over `grants` as pricing
/// does, period by period in time order, through the period labelled `through` (every period:
/// `None`). Labels `unit` cannot read are skipped.
pub fn replay_credit(
    grants: &[CreditGrant],
    used: &BTreeMap<&str, Amount>,
    unit: PeriodUnit,
    through: Option<&str>,
) -> CreditReplay {
    let mut r = CreditReplay {
        balances: grants.iter().map(|g| g.amount).collect(),
        ..CreditReplay::default()
    };
    let through = through.and_then(|t| unit.parse_label(t));
    let mut periods: Vec<(Period, &str, Amount)> = used
        .iter()
        .filter_map(|(label, amount)| Some((unit.parse_label(label)?, *label, *amount)))
        .filter(|(p, ..)| through.is_none_or(|t| *p <= t))
        .collect();
    periods.sort_by_key(|(p, ..)| *p);
    for (p, label, amount) in periods {
        let paid = burn_each(grants, &mut r.balances, p.0, amount);
        let free = promotional_of(grants, &paid);
        r.paid.insert(label.to_string(), paid);
        if free != Amount::ZERO {
            r.promotional.insert(label.to_string(), free);
        }
        if r.burning > 0 || amount > Amount::ZERO {
            r.burnt += amount;
            r.burning += 1;
        }
        r.last = Some((label.to_string(), p));
    }
    r
}

/// A period after which prepaid credit is projected to run out before its grants expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditBurn {
    pub period: EventTime,
    /// Credit left after the period (grants still usable after it).
    pub remaining: Amount,
    /// Average credit used per period since credit was first used.
    pub per_period: Amount,
    /// The period in which it runs out at that rate.
    pub runs_out: EventTime,
    /// The end of the last remaining grant (exclusive).
    pub planned_until: EventTime,
}

/// Burn-rate check after each period that used credit: at the average burn since the first use,
/// does the credit left run out before the latest expiry among the grants holding it? Grants
/// without expiry have no plan to run ahead of. `used`: credit used per period (positive);
/// `next`: the start of the period after a given one.
pub fn credit_burn(
    grants: &[CreditGrant],
    used: &BTreeMap<EventTime, Amount>,
    next: impl Fn(EventTime) -> EventTime,
) -> Vec<CreditBurn> {
    let mut balances: Vec<Amount> = grants.iter().map(|g| g.amount).collect();
    let mut out = Vec::new();
    let (mut burnt, mut periods) = (Amount::ZERO, 0i128);
    for (&start, &amount) in used {
        burn(grants, &mut balances, start, amount);
        if periods > 0 || amount > Amount::ZERO {
            burnt += amount;
            periods += 1;
        }
        let end = next(start);
        let holding: Vec<(&CreditGrant, Amount)> = grants
            .iter()
            .zip(balances.iter().copied())
            .filter(|(g, b)| *b > Amount::ZERO && g.expires.is_none_or(|e| e > end))
            .collect();
        let remaining: Amount = holding.iter().map(|(_, b)| *b).sum();
        if periods == 0
            || remaining <= Amount::ZERO
            || holding.iter().any(|(g, _)| g.expires.is_none())
        {
            continue;
        }
        let per_period = Amount(burnt.0 / periods);
        if per_period <= Amount::ZERO {
            continue;
        }
        let planned_until = holding
            .iter()
            .filter_map(|(g, _)| g.expires)
            .max()
            .expect("every holding grant expires");
        // Full periods the remaining credit pays for; it runs out in the one after them.
        let mut runs_out = end;
        for _ in 0..remaining.0.div_euclid(per_period.0).min(1200) {
            runs_out = next(runs_out);
        }
        if next(runs_out) <= planned_until {
            out.push(CreditBurn {
                period: start,
                remaining,
                per_period,
                runs_out,
                planned_until,
            });
        }
    }
    out
}

/// The derived lines of one invoice period with every credit grant at its full amount.
pub fn invoice_lines(
    terms: &ContractTerms,
    tax: Option<&Tax>,
    period_start: EventTime,
    usage: &BTreeMap<SkuIdx, Amount>,
    digits: u32,
    rounding: Rounding,
) -> Vec<DerivedLine> {
    let mut balances: Vec<Amount> = terms.credits.iter().map(|g| g.amount).collect();
    // At the prices in effect when the period starts.
    let p = PeriodContext {
        start: period_start,
        share: None,
        fees: fees_due(terms, (period_start, period_start), ALWAYS),
        term_fees: Amount::ZERO,
    };
    period_lines(terms, tax, p, usage, digits, rounding, &mut balances)
}

/// What the invoice period `[start, end)` of a contract running `span` bills before credits
/// and tax: its usage (rounded amounts by SKU), fees, discounts, the commitment true-up and the
/// cap, with fees and spend limits prorated to the part of the period it runs, and
/// `term_fees` ([`term_fees_due`]). How the forecast prices a period it has not seen.
pub fn net_before_credit(
    terms: &ContractTerms,
    (start, end): (EventTime, EventTime),
    (span, term_fees): ((EventTime, Option<EventTime>), Amount),
    usage: &BTreeMap<SkuIdx, Amount>,
    digits: u32,
    rounding: Rounding,
) -> Amount {
    let p = PeriodContext {
        start,
        share: active_share(span.0, span.1, start, end),
        fees: fees_due(terms, (start, end), span),
        term_fees,
    };
    // No credit balances: nothing burns.
    let derived: Amount = period_lines(terms, None, p, usage, digits, rounding, &mut [])
        .iter()
        .map(|l| l.amount)
        .sum();
    usage.values().copied().sum::<Amount>() + derived
}

/// One period's derived lines; burns `balances` (one per grant of `terms.credits`).
fn period_lines(
    terms: &ContractTerms,
    tax: Option<&Tax>,
    period: PeriodContext,
    usage: &BTreeMap<SkuIdx, Amount>,
    digits: u32,
    rounding: Rounding,
    balances: &mut [Amount],
) -> Vec<DerivedLine> {
    let period_start = period.start;
    let mut out = Vec::new();
    let push = |out: &mut Vec<DerivedLine>, kind, sku, exact: Amount| -> Amount {
        let amount = exact.round_to(digits, rounding);
        if amount != Amount::ZERO || exact != Amount::ZERO {
            out.push(DerivedLine {
                kind,
                sku,
                amount_exact: exact,
                amount,
            });
        }
        amount
    };
    let mut net: Amount = usage.values().copied().sum();
    let fees = period.fees + period.term_fees;
    net += push(&mut out, LineKind::Subscription, SkuIdx::INVOICE, fees);

    let active = || {
        terms
            .discounts
            .iter()
            .filter(|d| d.applies_in(period_start))
    };
    let mut by_sku: BTreeMap<SkuIdx, Amount> = BTreeMap::new();
    for d in active() {
        if let Some(sku) = d.sku {
            let base = usage.get(&sku).copied().unwrap_or_default();
            let taken = by_sku.entry(sku).or_default();
            *taken += off(d.off, base - *taken, digits, rounding);
        }
    }
    for (sku, taken) in by_sku {
        net += push(&mut out, LineKind::Discount, sku, -taken);
    }
    let mut invoice_wide = Amount::ZERO;
    for d in active().filter(|d| d.sku.is_none()) {
        invoice_wide += off(d.off, net - invoice_wide, digits, rounding);
    }
    net += push(&mut out, LineKind::Discount, SkuIdx::INVOICE, -invoice_wide);

    // The minimum and maximum spend bound what the period bills for itself: a fee billed in
    // advance for a term of months neither meets one month's commitment nor is waived by its cap.
    let in_advance = period.term_fees.round_to(digits, rounding);
    if let Some(min) = terms.minimum_spend.map(|m| prorated(m, period.share)) {
        let min = min.round_to(digits, rounding);
        let own = net - in_advance;
        if own < min {
            net += push(&mut out, LineKind::Commitment, SkuIdx::INVOICE, min - own);
        }
    }
    if let Some(max) = terms.maximum_spend.map(|m| prorated(m, period.share)) {
        let max = max.round_to(digits, rounding);
        let own = net - in_advance;
        if own > max {
            net += push(&mut out, LineKind::Cap, SkuIdx::INVOICE, max - own);
        }
    }
    let used = burn(&terms.credits, balances, period_start, net);
    net += push(&mut out, LineKind::Credit, SkuIdx::INVOICE, -used);
    if let Some(tax) = tax {
        push(
            &mut out,
            LineKind::Tax,
            SkuIdx::INVOICE,
            net.times_fraction(tax.rate),
        );
    }
    out
}

/// What a discount takes off `base` (never more than `base`, nothing off a negative base),
/// rounded to the minor unit so later steps work on invoice amounts.
fn off(d: DiscountOff, base: Amount, digits: u32, rounding: Rounding) -> Amount {
    if base <= Amount::ZERO {
        return Amount::ZERO;
    }
    let wanted = match d {
        DiscountOff::Percent(f) => base.times_fraction(f).round_to(digits, rounding),
        DiscountOff::Fixed(a) => a,
    };
    if wanted > base {
        base
    } else {
        wanted
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::catalog::Discount;
    use crate::money::UnitPrice;

    fn a(s: &str) -> Amount {
        Amount::parse_price(s).unwrap()
    }
    fn t(s: &str) -> EventTime {
        EventTime::parse_rfc3339(s).unwrap()
    }
    const NOV: &str = "2026-11-01T00:00:00Z";
    const TOKENS: SkuIdx = SkuIdx(1);
    const CALLS: SkuIdx = SkuIdx(2);

    fn usage(lines: &[(SkuIdx, &str)]) -> BTreeMap<SkuIdx, Amount> {
        lines.iter().map(|(s, v)| (*s, a(v))).collect()
    }
    fn percent(sku: Option<SkuIdx>, pct: &str) -> Discount {
        Discount {
            name: format!("{pct}% off"),
            sku,
            off: DiscountOff::Percent(UnitPrice(UnitPrice::parse(pct).unwrap().0 / 100)),
            from: None,
            until: None,
        }
    }
    fn fixed(sku: Option<SkuIdx>, amount: &str) -> Discount {
        Discount {
            name: format!("{amount} off"),
            sku,
            off: DiscountOff::Fixed(a(amount)),
            from: None,
            until: None,
        }
    }
    fn vat() -> Tax {
        Tax {
            id: "vat".into(),
            name: "VAT".into(),
            rate: UnitPrice::parse("0.19").unwrap(),
        }
    }
    fn lines(
        terms: &ContractTerms,
        tax: Option<&Tax>,
        u: &[(SkuIdx, &str)],
    ) -> Vec<(LineKind, SkuIdx, Amount)> {
        invoice_lines(terms, tax, t(NOV), &usage(u), 2, Rounding::HalfEven)
            .into_iter()
            .map(|l| (l.kind, l.sku, l.amount))
            .collect()
    }
    fn total(u: &[(SkuIdx, &str)], derived: &[(LineKind, SkuIdx, Amount)]) -> Amount {
        usage(u).values().copied().sum::<Amount>() + derived.iter().map(|l| l.2).sum()
    }

    #[test]
    fn no_terms_and_no_tax_add_nothing() {
        assert!(lines(&ContractTerms::default(), None, &[(TOKENS, "12.34")]).is_empty());
    }

    #[test]
    fn subscription_fees_are_one_line() {
        let terms = ContractTerms {
            fees: vec![
                Fee::new("platform", a("49")),
                Fee::new("support", a("10.50")),
            ],
            ..Default::default()
        };
        assert_eq!(
            lines(&terms, None, &[(TOKENS, "0")]),
            vec![(LineKind::Subscription, SkuIdx::INVOICE, a("59.50"))]
        );
    }

    #[test]
    fn a_sku_discount_takes_its_share_of_that_sku_only_and_rounds_once() {
        let terms = ContractTerms {
            discounts: vec![percent(Some(TOKENS), "12.5")],
            ..Default::default()
        };
        // 12.5% of 10.01 = 1.25125 -> 1.25 (half even).
        assert_eq!(
            lines(&terms, None, &[(TOKENS, "10.01"), (CALLS, "100")]),
            vec![(LineKind::Discount, TOKENS, a("-1.25"))]
        );
    }

    #[test]
    fn a_fixed_discount_never_exceeds_what_it_applies_to() {
        let terms = ContractTerms {
            fees: vec![Fee::new("platform", a("3"))],
            discounts: vec![fixed(None, "50"), fixed(Some(TOKENS), "7")],
            ..Default::default()
        };
        let got = lines(&terms, None, &[(TOKENS, "5"), (CALLS, "2")]);
        assert_eq!(
            got,
            vec![
                (LineKind::Subscription, SkuIdx::INVOICE, a("3")),
                (LineKind::Discount, TOKENS, a("-5")),
                (LineKind::Discount, SkuIdx::INVOICE, a("-5")),
            ]
        );
        assert_eq!(total(&[(TOKENS, "5"), (CALLS, "2")], &got), Amount::ZERO);
    }

    #[test]
    fn discounts_apply_only_inside_their_dates() {
        let mut promo = fixed(None, "5");
        promo.from = Some(t("2026-11-15T00:00:00Z"));
        let terms = ContractTerms {
            discounts: vec![promo.clone()],
            ..Default::default()
        };
        // The November period starts before the promotion: no discount.
        assert!(lines(&terms, None, &[(TOKENS, "20")]).is_empty());
        promo.from = Some(t(NOV));
        promo.until = Some(t("2026-12-01T00:00:00Z"));
        let terms = ContractTerms {
            discounts: vec![promo],
            ..Default::default()
        };
        assert_eq!(lines(&terms, None, &[(TOKENS, "20")]).len(), 1);
    }

    #[test]
    fn a_commitment_tops_up_to_the_minimum_exactly() {
        let terms = ContractTerms {
            fees: vec![Fee::new("platform", a("49"))],
            discounts: vec![percent(None, "10")],
            minimum_spend: Some(a("400")),
            ..Default::default()
        };
        let u = [(TOKENS, "263.95")];
        let got = lines(&terms, None, &u);
        // (263.95 + 49) * 10% = 31.295 -> 31.30 (half even); 400 - 281.65 = 118.35.
        assert_eq!(
            got,
            vec![
                (LineKind::Subscription, SkuIdx::INVOICE, a("49")),
                (LineKind::Discount, SkuIdx::INVOICE, a("-31.30")),
                (LineKind::Commitment, SkuIdx::INVOICE, a("118.35")),
            ]
        );
        assert_eq!(total(&u, &got), a("400"));
        // At or above the minimum there is no true-up line.
        assert!(lines(&terms, None, &[(TOKENS, "500")])
            .iter()
            .all(|l| l.0 != LineKind::Commitment));
    }

    #[test]
    fn a_commitment_applies_at_zero_usage() {
        let terms = ContractTerms {
            minimum_spend: Some(a("100")),
            ..Default::default()
        };
        assert_eq!(
            lines(&terms, None, &[(TOKENS, "0")]),
            vec![(LineKind::Commitment, SkuIdx::INVOICE, a("100"))]
        );
    }

    #[test]
    fn a_cap_takes_off_the_excess_and_tax_follows_the_capped_amount() {
        let terms = ContractTerms {
            maximum_spend: Some(a("60")),
            ..Default::default()
        };
        let u = [(TOKENS, "70.10"), (CALLS, "5")];
        let got = lines(&terms, Some(&vat()), &u);
        assert_eq!(
            got,
            vec![
                (LineKind::Cap, SkuIdx::INVOICE, a("-15.10")),
                (LineKind::Tax, SkuIdx::INVOICE, a("11.40")),
            ]
        );
        assert_eq!(total(&u, &got), a("71.40"));
        // Exactly at the cap: no cap line.
        assert_eq!(lines(&terms, None, &[(TOKENS, "60")]), vec![]);
    }

    #[test]
    fn tax_is_on_the_net_and_rounded_once() {
        // 19% of 10.05 = 1.9095 -> 1.91.
        assert_eq!(
            lines(
                &ContractTerms::default(),
                Some(&vat()),
                &[(TOKENS, "10.05")]
            ),
            vec![(LineKind::Tax, SkuIdx::INVOICE, a("1.91"))]
        );
    }

    fn grant(name: &str, amount: &str, priority: u32, expires: Option<&str>) -> CreditGrant {
        CreditGrant {
            name: name.into(),
            amount: a(amount),
            priority,
            granted: t("2026-10-01T00:00:00Z"),
            expires: expires.map(t),
            promotional: false,
            material_right: None,
        }
    }

    /// The subscription line of each month a contract with a monthly fee of 10 and an annual
    /// fee of 1200 (from `starts`, until `ends`) is invoiced for, from `first` through `last`.
    fn subscriptions(
        starts: &str,
        ends: Option<&str>,
        first: &str,
        last: &str,
    ) -> Vec<(String, Amount)> {
        let terms = ContractTerms {
            fees: vec![Fee::new("platform", a("10"))],
            term_fees: vec![crate::catalog::TermFee {
                until: ends.map(t),
                ..crate::catalog::TermFee::new("support", a("1200"), 12, t(starts))
            }],
            ..ContractTerms::default()
        };
        let unit = PeriodUnit::Month;
        let mut periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> = BTreeMap::new();
        let mut p = t(first);
        while p <= t(last) {
            periods.insert(p, usage(&[(TOKENS, "1")]));
            p = unit.end_of(Period(p));
        }
        contract_lines(&terms, None, &periods, unit, 2, Rounding::HalfEven)
            .into_iter()
            .filter(|(_, l)| l.kind == LineKind::Subscription)
            .map(|(start, l)| (unit.label(Period(start)), l.amount))
            .collect()
    }

    #[test]
    fn a_term_fee_is_billed_in_advance_in_the_period_each_term_starts_in() {
        let got = subscriptions(
            "2026-03-15T00:00:00Z",
            None,
            "2026-03-01T00:00:00Z",
            "2027-04-01T00:00:00Z",
        );
        assert_eq!(got.len(), 14, "every month bills the monthly fee: {got:?}");
        for (month, amount) in &got {
            let expected = match month.as_str() {
                // The terms start on 15 March 2026 and 15 March 2027.
                "2026-03" | "2027-03" => a("1210"),
                _ => a("10"),
            };
            assert_eq!(*amount, expected, "{month}");
        }
    }

    #[test]
    fn an_upgrade_bills_the_rest_of_its_period_or_term_and_a_downgrade_applies_from_the_next() {
        use crate::catalog::FeeChange;
        let change = |from: &str, amount: &str| FeeChange {
            from: t(from),
            amount: a(amount),
            ssp: a(amount),
        };
        let terms = ContractTerms {
            // 10 a month, upgraded to 20 on 15 June: June bills 10 and 10 x 16/30 more for
            // its last 16 days (15.33), July on 20. Downgraded to 15 on 10 May 2027: May still
            // bills 20, June on 15.
            fees: vec![Fee {
                changes: vec![
                    change("2026-06-15T00:00:00Z", "20"),
                    change("2027-05-10T00:00:00Z", "15"),
                ],
                ..Fee::new("platform", a("10"))
            }],
            // 1 200 a year from 1 January 2026; upgraded to 2 400 on 2 July (183 of the term's
            // 365 days left: 1 200 x 183/365 = 601.64 more, billed in July); downgraded to 600
            // on 1 March 2027, which bills nothing back and applies from the next term.
            term_fees: vec![crate::catalog::TermFee {
                changes: vec![
                    change("2026-07-02T00:00:00Z", "2400"),
                    change("2027-03-01T00:00:00Z", "600"),
                ],
                ..crate::catalog::TermFee::new("support", a("1200"), 12, t("2026-01-01T00:00:00Z"))
            }],
            ..ContractTerms::default()
        };
        let unit = PeriodUnit::Month;
        let mut periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> = BTreeMap::new();
        let mut p = t("2026-01-01T00:00:00Z");
        while p <= t("2028-02-01T00:00:00Z") {
            periods.insert(p, usage(&[(TOKENS, "1")]));
            p = unit.end_of(Period(p));
        }
        let got: Vec<(String, Amount)> =
            contract_lines(&terms, None, &periods, unit, 2, Rounding::HalfEven)
                .into_iter()
                .filter(|(_, l)| l.kind == LineKind::Subscription)
                .map(|(start, l)| (unit.label(Period(start)), l.amount))
                .collect();
        assert_eq!(got.len(), 26, "{got:?}");
        for (month, amount) in &got {
            let expected = match month.as_str() {
                "2026-01" => a("1210"),
                "2026-02" | "2026-03" | "2026-04" | "2026-05" => a("10"),
                "2026-06" => a("15.33"),
                "2026-07" => a("621.64"),
                "2026-08" | "2026-09" | "2026-10" | "2026-11" | "2026-12" => a("20"),
                "2027-01" => a("2420"),
                "2027-02" | "2027-03" | "2027-04" | "2027-05" => a("20"),
                "2028-01" => a("615"),
                _ => a("15"),
            };
            assert_eq!(*amount, expected, "{month}");
        }
        // A contract ending on 20 November, its fee upgraded from 30 to 60 on the 11th:
        // 30 x 19/30 for the part it runs, and 30 x 9/30 more from the upgrade to its end.
        let fee = Fee {
            changes: vec![change("2026-11-11T00:00:00Z", "60")],
            ..Fee::new("x", a("30"))
        };
        let span = (t("2026-01-01T00:00:00Z"), Some(t("2026-11-20T00:00:00Z")));
        let billed = fee.billed((t(NOV), t("2026-12-01T00:00:00Z")), span);
        assert_eq!(billed, (a("28"), a("28")));
    }

    #[test]
    fn the_first_invoiced_period_bills_the_term_running_at_its_start() {
        // The contract started in January; its first usage is in May, so May is the first
        // invoice: it bills the term that started in January (the months before were never
        // invoiced), and the next term is billed in January 2027.
        let got = subscriptions(
            "2026-01-01T00:00:00Z",
            None,
            "2026-05-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        );
        let annual: Vec<&str> = got
            .iter()
            .filter(|(_, x)| *x > a("10"))
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(annual, ["2026-05", "2027-01"]);
    }

    #[test]
    fn a_term_cut_short_by_the_contract_end_bills_its_share() {
        // 15 March to 15 September 2026: 184 of the term's 365 days. 1200 × 184 / 365 =
        // 604.93150..., rounded once on the line with the monthly fee: 614.93. No term starts
        // at or after the end.
        let got = subscriptions(
            "2026-03-15T00:00:00Z",
            Some("2026-09-15T00:00:00Z"),
            "2026-03-01T00:00:00Z",
            "2027-04-01T00:00:00Z",
        );
        assert_eq!(got[0], ("2026-03".to_string(), a("614.93")));
        assert!(got[1..].iter().all(|(_, a)| *a == self::a("10")), "{got:?}");
    }

    #[test]
    fn a_term_fee_neither_meets_the_minimum_spend_nor_is_cut_by_the_cap() {
        let annual = crate::catalog::TermFee::new("support", a("1200"), 12, t(NOV));
        let periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> =
            [(t(NOV), usage(&[(TOKENS, "80")]))].into();
        let lines = |minimum: &str, maximum: &str| -> Vec<(LineKind, Amount)> {
            let terms = ContractTerms {
                term_fees: vec![annual.clone()],
                minimum_spend: Some(a(minimum)),
                maximum_spend: Some(a(maximum)),
                ..ContractTerms::default()
            };
            contract_lines(
                &terms,
                None,
                &periods,
                PeriodUnit::Month,
                2,
                Rounding::HalfEven,
            )
            .into_iter()
            .map(|(_, l)| (l.kind, l.amount))
            .collect()
        };
        // November bills the year (1200) and 80 of usage: a minimum of 100 still tops the
        // month's own spend up by 20, and a maximum of 50 takes 30 off it, not 1230.
        assert_eq!(
            lines("100", "500"),
            vec![
                (LineKind::Subscription, a("1200")),
                (LineKind::Commitment, a("20")),
            ]
        );
        assert_eq!(
            lines("10", "50"),
            vec![
                (LineKind::Subscription, a("1200")),
                (LineKind::Cap, a("-30")),
            ]
        );
    }

    #[test]
    fn a_contract_active_for_part_of_a_period_pays_its_share_of_fees_and_limits() {
        let (nov, dec) = (t(NOV), t("2026-12-01T00:00:00Z"));
        // Starts on the 16th: 15 of November's 30 days.
        let half = active_share(t("2026-11-16T00:00:00Z"), None, nov, dec);
        assert_eq!(half, Some((15 * 86_400_000, 30 * 86_400_000)));
        // Active all month: no proration; ends on the 10th: 9 days.
        assert_eq!(
            active_share(t("2026-01-01T00:00:00Z"), None, nov, dec),
            None
        );
        let nine = active_share(t(NOV), Some(t("2026-11-10T00:00:00Z")), nov, dec);
        assert_eq!(nine, Some((9 * 86_400_000, 30 * 86_400_000)));
        let terms = ContractTerms {
            fees: vec![Fee::new("platform", a("49"))],
            minimum_spend: Some(a("100")),
            ..ContractTerms::default()
        };
        let periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> =
            [(nov, usage(&[(TOKENS, "10")]))].into();
        let lines = |span: (EventTime, Option<EventTime>)| -> Vec<(LineKind, Amount)> {
            contract_lines_prorated(
                &terms,
                None,
                &periods,
                PeriodUnit::Month,
                span,
                2,
                Rounding::HalfEven,
            )
            .into_iter()
            .map(|(_, l)| (l.kind, l.amount))
            .collect()
        };
        // Half the month: 24.50 of the fee, a minimum of 50: true-up 50 - 10 - 24.50.
        assert_eq!(
            lines((t("2026-11-16T00:00:00Z"), None)),
            vec![
                (LineKind::Subscription, a("24.5")),
                (LineKind::Commitment, a("15.5")),
            ]
        );
        // Nine days: 49 × 9/30 = 14.70; minimum 30: true-up 5.30.
        assert_eq!(
            lines((nov, Some(t("2026-11-10T00:00:00Z")))),
            vec![
                (LineKind::Subscription, a("14.7")),
                (LineKind::Commitment, a("5.3")),
            ]
        );
        // A third of a month: 49/3 = 16.333... rounds once, on the line, to 16.33.
        let third = lines((t("2026-11-21T00:00:00Z"), None));
        assert_eq!(third[0], (LineKind::Subscription, a("16.33")));
    }

    #[test]
    fn credits_burn_across_periods_by_priority_then_expiry() {
        // As loaded: priority first, then the earliest expiry.
        let terms = ContractTerms {
            minimum_spend: Some(a("10")),
            credits: vec![
                grant("promo", "30", 0, Some("2026-12-01T00:00:00Z")),
                grant("prepaid", "100", 0, None),
                grant("late", "500", 1, None),
            ],
            ..Default::default()
        };
        let periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> = [
            // Before the grants: no credit.
            (t("2026-09-01T00:00:00Z"), usage(&[(TOKENS, "25")])),
            // 60: promo 30 and prepaid 30.
            (t("2026-10-01T00:00:00Z"), usage(&[(TOKENS, "60")])),
            // 5 + true-up 5 = 10, from prepaid (promo is gone).
            (t("2026-11-01T00:00:00Z"), usage(&[(TOKENS, "5")])),
            // 200: the rest of prepaid (60), then 140 of the priority-1 grant.
            (t("2026-12-01T00:00:00Z"), usage(&[(TOKENS, "200")])),
        ]
        .into();
        let credit: Vec<(EventTime, Amount)> = contract_lines(
            &terms,
            Some(&vat()),
            &periods,
            PeriodUnit::Month,
            2,
            Rounding::HalfEven,
        )
        .into_iter()
        .filter(|(_, l)| l.kind == LineKind::Credit)
        .map(|(p, l)| (p, l.amount))
        .collect();
        assert_eq!(
            credit,
            vec![
                (t("2026-10-01T00:00:00Z"), a("-60")),
                (t("2026-11-01T00:00:00Z"), a("-10")),
                (t("2026-12-01T00:00:00Z"), a("-200")),
            ]
        );
        // A fully credited period owes no tax.
        let lines = contract_lines(
            &terms,
            Some(&vat()),
            &periods,
            PeriodUnit::Month,
            2,
            Rounding::HalfEven,
        );
        assert!(lines
            .iter()
            .all(|(p, l)| l.kind != LineKind::Tax || *p == t("2026-09-01T00:00:00Z")));
    }

    #[test]
    fn an_expired_credit_is_not_used() {
        let terms = ContractTerms {
            credits: vec![grant("promo", "30", 0, Some("2026-11-01T00:00:00Z"))],
            ..Default::default()
        };
        let periods: BTreeMap<EventTime, BTreeMap<SkuIdx, Amount>> =
            [(t("2026-11-01T00:00:00Z"), usage(&[(TOKENS, "60")]))].into();
        assert!(contract_lines(
            &terms,
            None,
            &periods,
            PeriodUnit::Month,
            2,
            Rounding::HalfEven
        )
        .is_empty());
    }

    #[test]
    fn a_fast_burn_is_flagged_and_a_slow_one_is_not() {
        let next = |t: EventTime| {
            let m = crate::time::PeriodUnit::Month;
            m.end_of(m.period_of(t))
        };
        let mut g = grant("annual", "300", 0, Some("2027-01-01T00:00:00Z"));
        g.granted = t("2026-09-01T00:00:00Z");
        let used = |a: &str, b: &str| -> BTreeMap<EventTime, Amount> {
            [
                (t("2026-09-01T00:00:00Z"), self::a(a)),
                (t("2026-10-01T00:00:00Z"), self::a(b)),
            ]
            .into()
        };
        // 100 a month: 200 left after September lasts October and November, runs out in
        // December, before the grant ends on 2027-01-01.
        let fast = credit_burn(std::slice::from_ref(&g), &used("100", "100"), next);
        assert_eq!(fast.len(), 2);
        assert_eq!(fast[1].remaining, a("100"));
        assert_eq!(fast[1].runs_out, t("2026-12-01T00:00:00Z"));
        // 50 a month lasts into 2027: no flag.
        assert!(credit_burn(std::slice::from_ref(&g), &used("50", "50"), next).is_empty());
        // A grant without expiry has no plan to run ahead of.
        g.expires = None;
        assert!(credit_burn(&[g], &used("100", "100"), next).is_empty());
    }

    fn cents() -> impl Strategy<Value = i64> {
        0i64..10_000_000
    }

    proptest! {
        /// With a minimum and a maximum, the net invoice lands inside them, and discounts
        /// never make it negative.
        #[test]
        fn the_net_stays_between_minimum_and_maximum(
            tok in cents(), calls in cents(), fee in cents(), pct in 0u32..100, lo in cents(), span in cents()
        ) {
            let c = |v: i64| Amount(v as i128 * 10i128.pow(16));
            let terms = ContractTerms {
                fees: vec![Fee::new("fee", c(fee))],
                discounts: vec![percent(Some(TOKENS), &pct.to_string()), fixed(None, "1")],
                minimum_spend: Some(c(lo)),
                maximum_spend: Some(c(lo + span)),
                credits: vec![],
                term_fees: vec![],
                budget: None,
            };
            let u: BTreeMap<SkuIdx, Amount> = [(TOKENS, c(tok)), (CALLS, c(calls))].into();
            let derived = invoice_lines(&terms, None, t(NOV), &u, 2, Rounding::HalfEven);
            let net = u.values().copied().sum::<Amount>() + derived.iter().map(|l| l.amount).sum();
            prop_assert!(net >= c(lo) && net <= c(lo + span), "net {net} outside {}..{}", c(lo), c(lo + span));
            for l in &derived {
                prop_assert_eq!(l.amount, l.amount.round_to(2, Rounding::HalfEven));
            }
        }

        /// More usage never lowers the invoice total (fees, discounts, commitment, cap, tax).
        #[test]
        fn totals_are_monotonic_in_usage(tok in cents(), extra in cents(), pct in 0u32..100) {
            let c = |v: i64| Amount(v as i128 * 10i128.pow(16));
            let terms = ContractTerms {
                fees: vec![Fee::new("fee", c(4900))],
                discounts: vec![percent(None, &pct.to_string())],
                minimum_spend: Some(c(100_000)),
                maximum_spend: None,
                credits: vec![],
                term_fees: vec![],
                budget: None,
            };
            let invoice = |v: i64| {
                let u: BTreeMap<SkuIdx, Amount> = [(TOKENS, c(v))].into();
                let d = invoice_lines(&terms, Some(&vat()), t(NOV), &u, 2, Rounding::HalfEven);
                u.values().copied().sum::<Amount>() + d.iter().map(|l| l.amount).sum()
            };
            prop_assert!(invoice(tok + extra) >= invoice(tok));
        }
    }
}
