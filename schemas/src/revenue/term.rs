//! What spans a contract's whole term in the revenue schedule: ramps (a fee's price steps
//! agreed at signing, recognised on a straight line) and material rights (free grants given
//! for signing, an obligation of their own), each stated as one position.

use std::collections::BTreeMap;

use super::model::{by_day, share, Amounts, Schedule, ScheduleKey, Terms};
use crate::catalog::Term;
use crate::money::Amount;
use crate::pricing::invoice::fees_billed;
use crate::time::{EventTime, PeriodUnit};

/// Spreads what each ramp fee of `c` ([`Fee::ramp`]) bills over the contract's term by its
/// standalone selling price: a ramp's steps were agreed at signing, so its consideration is
/// one price for the whole term (ASC 606-10-32-28), not each period's. The rows computed from
/// the invoices recognise each period's list price (by day, like any fee); this adds to the
/// fee's rows of the periods from `first` (the contract's first invoiced period, which catches
/// up on any before it) to the one `as_of` falls in the difference between that and the
/// ramp's straight line: what the fee bills over the whole term, times the share of its
/// standalone selling price served by then. Billing does not change, so the fee's obligation
/// is then stated as one position ([`restate`]): a contract liability while it has billed
/// more than it earned, a contract asset while it has earned more; zero at the term's end.
pub(super) fn ramp(
    out: &mut Schedule,
    c: &Terms,
    first: &str,
    rights: Option<&Rights>,
    unit: PeriodUnit,
    as_of: EventTime,
) {
    let Some(until) = c.span.1 else { return };
    let every_period = c.fees.iter().filter(|f| f.ramp).map(|f| {
        let parts = unit
            .periods(unit.period_of(c.span.0), until)
            .flat_map(|p| f.parts((p.0, unit.end_of(p)), c.span))
            .collect::<Vec<_>>();
        (&f.name, parts)
    });
    let in_advance = c
        .term_fees
        .iter()
        .filter(|f| f.ramp)
        .map(|f| (&f.name, f.billed_in(f.anchor, until, false)));
    for (name, parts) in every_period.chain(in_advance) {
        // What the parts recognise by `at` at their list prices (`of`: amount) or at their
        // standalone selling prices (`of`: ssp), each by day over its service.
        let by = |at: EventTime, of: fn(&Term) -> Amount| -> Amount {
            parts
                .iter()
                .map(|p| by_day(of(p), (p.start, p.end), at))
                .sum()
        };
        let amount: fn(&Term) -> Amount = |p| p.amount;
        let ssp: fn(&Term) -> Amount = |p| p.ssp;
        let (billed, value) = (by(until, amount), by(until, ssp));
        let Some(first) = unit.parse_label(first) else {
            continue;
        };
        if value <= Amount::ZERO {
            continue;
        }
        // The straight line's lead on the list price by `at`.
        let ahead = |at: EventTime| share(billed, by(at, ssp), value) - by(at, amount);
        let key = |period: String| ScheduleKey {
            customer_id: c.customer.clone(),
            contract_id: c.contract.clone(),
            obligation: format!("subscription:{name}"),
            service_period: period.clone(),
            period,
            currency: c.currency.clone(),
        };
        let mut before = Amount::ZERO;
        for p in unit.periods(first, until.min(as_of)) {
            // What the contract's material rights take of the fee is not the fee's revenue
            // (taken of the running total, so that the shifts still sum to zero exactly).
            let now = ahead(unit.end_of(p).min(as_of));
            let now = now - rights.map_or(Amount::ZERO, |r| r.take(now));
            out.entry(key(unit.label(p))).or_default().recognised += now - before;
            before = now;
        }
        restate(out, &key(String::new()));
    }
}

/// What the material rights took of each contract's fees, per closed invoice period:
/// (contract, period label) → amount.
pub(super) type Taken<'a> = BTreeMap<(&'a str, &'a str), Amount>;

/// A contract's material rights ([`CreditGrant::material_right`]) and what they take of its
/// fees: the rights' standalone selling prices against the fees' over the contract's term.
pub(super) struct Rights {
    /// Each right (its index among the contract's grants) and its standalone selling price:
    /// its amount times the share expected to be redeemed.
    grants: Vec<(usize, Amount)>,
    /// The rights' standalone selling prices, summed.
    value: Amount,
    /// The fees' standalone selling prices over the term, summed.
    fees_value: Amount,
    /// What the fees bill at list price in each invoice period of the term, by its start.
    list: Vec<(EventTime, Amount)>,
    /// The term's end.
    until: EventTime,
}

impl Rights {
    pub(super) fn of(c: &Terms, unit: PeriodUnit) -> Option<Rights> {
        let until = c.span.1?;
        let grants: Vec<(usize, Amount)> = c
            .grants
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some((i, g.amount.times_fraction(g.material_right?))))
            .filter(|(_, v)| *v > Amount::ZERO)
            .collect();
        if grants.is_empty() {
            return None;
        }
        let (mut list, mut fees_value) = (Vec::new(), Amount::ZERO);
        for p in unit.periods(unit.period_of(c.span.0), until) {
            let fees = fees_billed((c.fees, c.term_fees), c.span, (p.0, unit.end_of(p)), false);
            list.push((p.0, fees.iter().map(|f| f.amount).sum()));
            fees_value += fees.iter().map(|f| f.ssp).sum::<Amount>();
        }
        let value = grants.iter().map(|g| g.1).sum();
        Some(Rights {
            grants,
            value,
            fees_value,
            list,
            until,
        })
    }

    /// The rights' share of `x`, an amount the fees bill.
    pub(super) fn take(&self, x: Amount) -> Amount {
        share(x, self.value, self.value + self.fees_value)
    }

    /// The `j`-th right's part of `x`, an amount the rights take, by their standalone selling
    /// prices: the last takes what the others leave, so the parts sum to `x` exactly.
    pub(super) fn part(&self, j: usize, x: Amount) -> Amount {
        let of = |g: &(usize, Amount)| share(x, g.1, self.value);
        match j + 1 == self.grants.len() {
            true => x - self.grants[..j].iter().map(of).sum::<Amount>(),
            false => of(&self.grants[j]),
        }
    }
}

/// Adds the rows of a contract's material rights (obligation `material right:<grant>`) to
/// `out`, period by period from `first` (the contract's first invoiced period) to the one
/// `as_of` falls in. Each closed period bills what the rights took of its fees (`taken`),
/// split by their standalone selling prices. Each right recognises the consideration it is
/// expected to get over the term (what it took so far, and its share of the fees still to be
/// billed at list price) in proportion to how much of it has been redeemed (`paid`: what each
/// grant paid of each period's credit, against its amount times the share expected to be
/// redeemed), and all of it once it expired or the term ended. Each right's obligation is
/// stated as one position ([`restate`]): a liability while the customer has paid for more
/// of it than it used, an asset while it used more.
pub(super) fn material_rights(
    out: &mut Schedule,
    c: &Terms,
    r: &Rights,
    (first, taken, paid): (&str, &Taken, &BTreeMap<String, Vec<Amount>>),
    unit: PeriodUnit,
    as_of: EventTime,
) {
    let Some(first) = unit.parse_label(first) else {
        return;
    };
    let key = |name: &str, period: String| ScheduleKey {
        customer_id: c.customer.clone(),
        contract_id: c.contract.clone(),
        obligation: format!("material right:{name}"),
        service_period: period.clone(),
        period,
        currency: c.currency.clone(),
    };
    let (mut took, mut redeemed) = (Amount::ZERO, vec![Amount::ZERO; r.grants.len()]);
    // Each right's billed and recognised so far.
    let mut before = vec![(Amount::ZERO, Amount::ZERO); r.grants.len()];
    for p in unit.periods(first, r.until.min(as_of)) {
        let (end, label) = (unit.end_of(p), unit.label(p));
        let closed = end <= as_of;
        took += taken
            .get(&(c.contract.as_str(), label.as_str()))
            .copied()
            .unwrap_or_default();
        // What the rights will have taken by the term's end: so far, and their share of what
        // the fees are still to bill (this period too while it is open).
        let to_come: Amount = r
            .list
            .iter()
            .filter(|(start, _)| *start > p.0 || (*start == p.0 && !closed))
            .map(|(_, a)| *a)
            .sum();
        let expected = took + r.take(to_come);
        for (j, &(i, v)) in r.grants.iter().enumerate() {
            let g = &c.grants[i];
            redeemed[j] += paid
                .get(&label)
                .and_then(|x| x.get(i))
                .copied()
                .unwrap_or_default();
            let last = g.expires.map_or(r.until, |e| e.min(r.until));
            let over = closed && end >= last;
            // Redeemed so far, of what is expected to be.
            let exercised = if over { v } else { redeemed[j].min(v) };
            // Running totals, so that what a right bills and what it recognises come out
            // equal to the last digit once it is over.
            let billed = r.part(j, took);
            let recognised = share(r.part(j, expected), exercised, v);
            let row = out.entry(key(&g.name, label.clone())).or_default();
            row.billed += billed - before[j].0;
            row.recognised += recognised - before[j].1;
            before[j] = (billed, recognised);
        }
    }
    for &(i, _) in &r.grants {
        restate(out, &key(&c.grants[i].name, String::new()));
    }
}

/// States the rows of `of`'s obligation (every service period and period) as one position,
/// period by period: each row's `recognised` against its `billed` moves the position, a
/// contract liability (`deferred`) while billing is ahead, a contract asset (`unbilled`) while
/// revenue is.
pub(super) fn restate(out: &mut Schedule, of: &ScheduleKey) {
    let mut rows: Vec<(&ScheduleKey, &mut Amounts)> = out
        .iter_mut()
        .filter(|(k, _)| {
            (&k.customer_id, &k.contract_id, &k.obligation, &k.currency)
                == (
                    &of.customer_id,
                    &of.contract_id,
                    &of.obligation,
                    &of.currency,
                )
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.0.period, &a.0.service_period).cmp(&(&b.0.period, &b.0.service_period))
    });
    let zero = Amount::ZERO;
    let mut position = zero; // billed less recognised so far: > 0 a liability, < 0 an asset
    for (_, a) in rows {
        let next = position + a.billed - a.recognised;
        a.deferred = next.max(zero) - position.max(zero);
        a.unbilled = (-next).max(zero) - (-position).max(zero);
        position = next;
    }
}
