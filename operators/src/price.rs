//! Pricing aggregation: turns the rated usage of each (customer, contract, SKU, region, service
//! period) into invoice lines and per-tier rated rows.
//!
//! (data, time, diff): a differential `reduce` keyed by [`LineKey`]. Whenever a key's usage
//! changes at epoch `t`, its lines are recomputed and only the difference leaves, at `t`: a changed
//! line is a `-1` for the old row and a `+1` for the new one, never an update in place.
//!
//! Lines: the first invoice period of a service period carries its usage; later invoice periods
//! (late events) carry adjustments. An invoice period's amount is
//! `price(usage billed up to it) - price(usage billed before it)`, so an adjustment is exactly what
//! the late usage adds at the tier position the period had reached. Rounding to the currency's
//! minor unit happens here, once per line.
//!
//! State: differential's arrangements of the input and output, one entry per key and value;
//! compacted as the frontier advances.

use std::collections::BTreeMap;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::PriceIdx;
use meterflow_schemas::money::{minor_unit_digits, Amount, Quantity, Rounding};
use meterflow_schemas::pricing::{price_period, Segment};
use meterflow_schemas::rows::{InvoiceLine, LineKey, LineKind, LineUsage, RatedRow};
use meterflow_schemas::time::Period;
use serde::{Deserialize, Serialize};

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

pub fn price<'s>(
    rated: RatedUsage<'s>,
    rounding: Rounding,
) -> VecCollection<'s, Epoch, Priced, isize> {
    rated
        .reduce_named(
            "Price",
            move |key: &LineKey,
                  input: &[(&(Period, SegmentPrice), UsageSum)],
                  output: &mut Vec<(Priced, isize)>| {
                for row in price_line(key, input, rounding) {
                    output.push((row, 1));
                }
            },
        )
        .map(|(_key, row)| row)
}

/// Lines and rated rows of one key, from its accumulated usage (sorted by invoice period, then
/// segment price).
pub fn price_line(
    key: &LineKey,
    input: &[(&(Period, SegmentPrice), UsageSum)],
    rounding: Rounding,
) -> Vec<Priced> {
    let mut out = Vec::new();
    let mut invoice_periods: Vec<Period> = input.iter().map(|((p, _), _)| *p).collect();
    invoice_periods.dedup();
    let Some(currency) = input.first().map(|((_, s), _)| s.currency.clone()) else {
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
        let upto = charge(input.iter().filter(|((p, _), _)| *p <= period));
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

fn charge<'a>(usage: impl Iterator<Item = &'a (&'a (Period, SegmentPrice), UsageSum)>) -> Charge {
    // Net usage per segment price, in version order.
    let mut per_price: BTreeMap<&SegmentPrice, UsageSum> = BTreeMap::new();
    for ((_, segment), sum) in usage {
        per_price.entry(segment).or_default().plus_equals(sum);
    }
    let prices: Vec<&SegmentPrice> = per_price.keys().copied().collect();
    let segments: Vec<Segment> = per_price
        .iter()
        .map(|(s, u)| Segment {
            model: &s.model,
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
