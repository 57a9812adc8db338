//! Pricing aggregation: turns the rated usage of each (customer, contract, SKU, region, service
//! period) into invoice lines and per-tier rated rows.
//!
//! (data, time, diff): keyed by [`LineKey`] (exchanged by customer, as the sinks take their
//! rows). Whenever a key's usage changes at epoch `t`, its lines are recomputed and only the
//! difference leaves, at `t`: a changed line is a `-1` for the old row and a `+1` for the new
//! one, never an update in place. This is what differential's `reduce` computes; epochs are
//! totally ordered and every epoch is finished once the frontier passes it, so each key keeps
//! its accumulated usage and its last rows instead of two arrangements with their history.
//!
//! Lines: the first invoice period of a service period carries its usage; later invoice periods
//! (late events) carry adjustments. An invoice period's amount is
//! `price(usage billed up to it) - price(usage billed before it)`, so an adjustment is exactly what
//! the late usage adds at the tier position the period had reached. Rounding to the currency's
//! minor unit happens here, once per line.
//!
//! State: per key, its usage per (invoice period, segment price) and the rows last priced from
//! it; per unfinished epoch, its updates.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use meterflow_schemas::catalog::{Catalog, PriceIdx};
use meterflow_schemas::hashing::FxHashMap;
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::pricing::{price_period, Segment};
use meterflow_schemas::rows::{customer_hash, InvoiceLine, LineKey, LineKind, LineUsage, RatedRow};
use meterflow_schemas::time::Period;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use crate::aggregate::UsageSum;
use crate::rate_join::{RatedUsage, SegmentPrice};
use crate::Epoch;

/// One output of pricing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priced {
    Line(InvoiceLine),
    Rated(RatedRow),
    Usage(LineUsage),
}

type Rated = (LineKey, (Period, SegmentPrice));

/// One key's accumulated usage (only non-zero sums, in value order) and the rows priced from it.
#[derive(Default)]
struct Line {
    usage: BTreeMap<(Period, SegmentPrice), UsageSum>,
    rows: Vec<Priced>,
}

pub fn price<'s>(
    rated: RatedUsage<'s>,
    catalog: Arc<Catalog>,
    rounding: Rounding,
) -> VecCollection<'s, Epoch, Priced, isize> {
    type Pending = BTreeMap<Epoch, (Capability<Epoch>, Vec<(Rated, UsageSum)>)>;
    let mut pending: Pending = BTreeMap::new();
    let mut lines: FxHashMap<LineKey, Line> = FxHashMap::default();
    let by_customer =
        Exchange::new(|((k, _), _, _): &(Rated, Epoch, UsageSum)| customer_hash(k.customer));
    rated
        .inner
        .unary_frontier(by_customer, "Price", move |_cap, _info| {
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    for (rated, t, sum) in data.flat_map(|d| d.drain(..)) {
                        pending
                            .entry(t)
                            .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()))
                            .1
                            .push((rated, sum));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.frontier().less_equal(entry.key()) {
                        break;
                    }
                    let t = *entry.key();
                    let (cap, updates) = entry.remove();
                    let mut changed: Vec<LineKey> = Vec::with_capacity(updates.len());
                    for ((key, value), sum) in updates {
                        let usage = &mut lines.entry(key).or_default().usage;
                        match usage.entry(value) {
                            Entry::Occupied(mut e) => {
                                e.get_mut().plus_equals(&sum);
                                if e.get().is_zero() {
                                    e.remove();
                                }
                            }
                            Entry::Vacant(e) => {
                                if !sum.is_zero() {
                                    e.insert(sum);
                                }
                            }
                        }
                        changed.push(key);
                    }
                    changed.sort_unstable();
                    changed.dedup();
                    let mut session = output.session(&cap);
                    for key in changed {
                        let line = lines.get_mut(&key).expect("a changed key is held");
                        let input: Vec<(&(Period, SegmentPrice), UsageSum)> =
                            line.usage.iter().map(|(v, s)| (v, *s)).collect();
                        let mut rows = price_line(&catalog, &key, &input, rounding);
                        rows.sort_unstable();
                        difference(&line.rows, &rows, |row, diff| {
                            session.give((row.clone(), t, diff))
                        });
                        if line.usage.is_empty() {
                            lines.remove(&key);
                        } else {
                            line.rows = rows;
                        }
                    }
                }
            }
        })
        .as_collection()
}

/// What turns the sorted rows `old` into the sorted rows `new`: each row only in `old` with -1,
/// each row only in `new` with +1 (rows in both, counted with their repeats, cancel).
fn difference(old: &[Priced], new: &[Priced], mut emit: impl FnMut(&Priced, isize)) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                emit(a, -1);
                i += 1;
            }
            (Some(a), None) => {
                emit(a, -1);
                i += 1;
            }
            (_, Some(b)) => {
                emit(b, 1);
                j += 1;
            }
            (None, None) => unreachable!("the loop ends first"),
        }
    }
}

/// Lines and rated rows of one key, from its accumulated usage (sorted by invoice period, then
/// segment price).
pub fn price_line(
    catalog: &Catalog,
    key: &LineKey,
    input: &[(&(Period, SegmentPrice), UsageSum)],
    rounding: Rounding,
) -> Vec<Priced> {
    let mut out = Vec::new();
    let mut invoice_periods: Vec<Period> = input.iter().map(|((p, _), _)| *p).collect();
    invoice_periods.dedup();
    let Some(currency) = input
        .first()
        .map(|((_, s), _)| catalog.price(s.price).currency.clone())
    else {
        return out;
    };
    let digits = minor_unit_digits(&currency);
    for ((invoice_period, segment), sum) in input {
        out.push(Priced::Usage(LineUsage {
            key: *key,
            invoice_period: *invoice_period,
            price: segment.price,
            events: sum.events,
            quantity: sum.quantity,
            fee_adjustment: sum.fee_adjustment,
        }));
    }
    let mut before = Charge::default();
    for period in invoice_periods {
        let upto = charge(catalog, input.iter().filter(|((p, _), _)| *p <= period));
        let (mut events, mut quantity) = (0i64, Quantity::ZERO);
        for ((_, _), sum) in input.iter().filter(|((p, _), _)| *p == period) {
            events += sum.events;
            quantity += sum.quantity;
        }
        let amount_exact = upto.total - before.total;
        out.push(Priced::Line(InvoiceLine {
            key: *key,
            invoice_period: period,
            kind: if period == key.service_period {
                LineKind::Usage
            } else {
                LineKind::Adjustment
            },
            currency: currency.clone(),
            events,
            quantity,
            amount_exact,
            amount: amount_exact.round_to(digits, rounding),
        }));
        let tiers: std::collections::BTreeSet<(PriceIdx, u32)> = upto
            .tiers
            .keys()
            .chain(before.tiers.keys())
            .copied()
            .collect();
        for (price, tier) in tiers {
            let (q, a) = upto.tiers.get(&(price, tier)).copied().unwrap_or_default();
            let (bq, ba) = before
                .tiers
                .get(&(price, tier))
                .copied()
                .unwrap_or_default();
            if q != bq || a != ba || period == key.service_period {
                out.push(Priced::Rated(RatedRow {
                    key: *key,
                    invoice_period: period,
                    price,
                    tier,
                    quantity: q - bq,
                    amount: a - ba,
                }));
            }
        }
        before = upto;
    }
    out
}

/// The exact charge of a set of usage, by (price, tier).
#[derive(Default)]
struct Charge {
    total: Amount,
    tiers: BTreeMap<(PriceIdx, u32), (Quantity, Amount)>,
}

fn charge<'a>(
    catalog: &Catalog,
    usage: impl Iterator<Item = &'a (&'a (Period, SegmentPrice), UsageSum)>,
) -> Charge {
    // Net usage per segment price, in version order.
    let mut per_price: BTreeMap<&SegmentPrice, UsageSum> = BTreeMap::new();
    for ((_, segment), sum) in usage {
        per_price.entry(segment).or_default().plus_equals(sum);
    }
    let prices: Vec<&SegmentPrice> = per_price.keys().copied().collect();
    let segments: Vec<Segment> = per_price
        .iter()
        .map(|(s, u)| Segment {
            model: &catalog.price(s.price).model,
            quantity: u.quantity,
            events: u.events,
            fee_adjustment: u.fee_adjustment,
        })
        .collect();
    let priced = price_period(&segments);
    let mut c = Charge {
        total: priced.total(),
        tiers: BTreeMap::new(),
    };
    for t in priced.tiers {
        let e = c
            .tiers
            .entry((prices[t.segment].price, t.tier as u32))
            .or_default();
        e.0 += t.quantity;
        e.1 += t.amount;
    }
    c
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use differential_dataflow::input::Input;
    use meterflow_schemas::catalog::{CustomerIdx, PriceIdx, SkuIdx};
    use meterflow_schemas::fixtures;
    use meterflow_schemas::ids::ContractIdx;
    use meterflow_schemas::money::Quantity;
    use meterflow_schemas::time::{EventTime, PeriodUnit};
    use timely::dataflow::operators::Inspect;

    use super::*;

    type Out = Arc<Mutex<Vec<(Priced, Epoch, isize)>>>;

    fn consolidated(out: &Out) -> Vec<(Epoch, Priced, isize)> {
        let mut v: Vec<(Epoch, Priced, isize)> = out
            .lock()
            .unwrap()
            .iter()
            .map(|(p, t, d)| (*t, p.clone(), *d))
            .collect();
        v.sort();
        let mut merged: Vec<(Epoch, Priced, isize)> = Vec::new();
        for (t, p, d) in v {
            match merged.last_mut() {
                Some(last) if last.0 == t && last.1 == p => last.2 += d,
                _ => merged.push((t, p, d)),
            }
        }
        merged.retain(|x| x.2 != 0);
        merged
    }

    /// Random usage of a few keys and prices over `epochs` epochs, some of it taken back to
    /// zero: the keyed operator must leave exactly what differential's `reduce` leaves, epoch by
    /// epoch, with one worker and with two.
    #[test]
    fn pricing_leaves_what_a_differential_reduce_leaves() {
        let catalog = Arc::new(fixtures::catalog());
        let month = |m: i64| PeriodUnit::Month.period_of(EventTime(m * 31 * 86_400_000));
        for (workers, seed) in [(1, 7u64), (2, 11), (1, 19), (2, 23)] {
            let catalog = catalog.clone();
            let (ours, theirs): (Out, Out) = Default::default();
            let (o, r) = (ours.clone(), theirs.clone());
            timely::execute(timely::Config::process(workers), move |worker| {
                let (o, r, catalog) = (o.clone(), r.clone(), catalog.clone());
                let reference = catalog.clone();
                let mut input = worker.dataflow::<Epoch, _, _>(|scope| {
                    let (input, rated) = scope.new_collection::<Rated, UsageSum>();
                    price(rated.clone(), catalog.clone(), Rounding::HalfEven)
                        .inner
                        .inspect(move |x| o.lock().unwrap().push(x.clone()));
                    rated
                        .reduce_named(
                            "Reference",
                            move |key: &LineKey,
                                  input: &[(&(Period, SegmentPrice), UsageSum)],
                                  output: &mut Vec<(Priced, isize)>| {
                                for row in price_line(&reference, key, input, Rounding::HalfEven) {
                                    output.push((row, 1));
                                }
                            },
                        )
                        .map(|(_key, row)| row)
                        .inner
                        .inspect(move |x| r.lock().unwrap().push(x.clone()));
                    input
                });
                if worker.index() != 0 {
                    return;
                }
                let mut state = seed;
                let mut next = move |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let prices: Vec<PriceIdx> =
                    (0..catalog.prices.len() as u32).map(PriceIdx).collect();
                let mut given: Vec<(Rated, UsageSum)> = Vec::new();
                for epoch in 0..12u64 {
                    input.advance_to(epoch);
                    for _ in 0..40 {
                        if !given.is_empty() && next(4) == 0 {
                            // Take an earlier update back entirely.
                            let (rated, mut sum) =
                                given.swap_remove(next(given.len() as u64) as usize);
                            sum.events = -sum.events;
                            sum.quantity = Quantity(-sum.quantity.0);
                            input.update(rated, sum);
                            continue;
                        }
                        let price = prices[next(prices.len() as u64) as usize];
                        let key = LineKey {
                            customer: CustomerIdx(next(3) as u32),
                            contract: ContractIdx(next(2) as u32),
                            sku: SkuIdx(next(2) as u32),
                            region: None,
                            service_period: month(next(2) as i64),
                        };
                        let invoice_period = month(next(3) as i64);
                        let segment = SegmentPrice::of(&catalog, price);
                        let sum = UsageSum {
                            events: 1,
                            quantity: Quantity::from_units(next(5_000) as i64 + 1),
                            fee_adjustment: Amount::ZERO,
                        };
                        let rated = (key, (invoice_period, segment));
                        given.push((rated, sum));
                        input.update(rated, sum);
                    }
                }
            })
            .unwrap();
            let (ours, theirs) = (consolidated(&ours), consolidated(&theirs));
            assert!(!theirs.is_empty());
            assert!(
                theirs.iter().any(|(_, _, d)| *d < 0),
                "the input retracted no row"
            );
            assert_eq!(ours, theirs, "workers {workers}, seed {seed}");
        }
    }

    #[test]
    fn the_difference_of_two_row_sets_counts_repeats() {
        let row = |events: i64| {
            Priced::Usage(LineUsage {
                key: LineKey {
                    customer: CustomerIdx(0),
                    contract: ContractIdx(0),
                    sku: SkuIdx(0),
                    region: None,
                    service_period: Period(EventTime(0)),
                },
                invoice_period: Period(EventTime(0)),
                price: PriceIdx(0),
                events,
                quantity: Quantity::ZERO,
                fee_adjustment: Amount::ZERO,
            })
        };
        let (old, new) = (
            vec![row(1), row(2), row(2), row(4)],
            vec![row(2), row(3), row(4), row(4)],
        );
        let mut out = Vec::new();
        difference(&old, &new, |r, d| out.push((r.clone(), d)));
        out.sort();
        let mut want = vec![(row(1), -1), (row(2), -1), (row(3), 1), (row(4), 1)];
        want.sort();
        assert_eq!(out, want);
    }
}
