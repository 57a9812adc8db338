//! Non-additive meters: `max`, `unique_count` and `latest`. Their period quantity is a function
//! of the period's whole set of readings, so it cannot be summed event by event like `sum` and
//! `count` (see [`crate::aggregate`]); a void must be able to take the peak, the last reading or
//! the only occurrence of a value back out.
//!
//! (data, time, diff): readings `(line, Reading)` with diff `+1` (an event) or `-1` (its void),
//! delayed to the end of their pricing round, go through a differential `reduce` per line. It
//! turns the line's readings into the same pricing input the additive meters produce,
//! `(price, (line, invoice period))` with a [`UsageSum`] diff, so rating, invoices,
//! entitlements, shadow billing and the sinks treat every meter alike.
//!
//! Per line, for each invoice period `P` in order, the readings billed up to `P` give one
//! quantity and one price:
//! - `max`: the largest reading; `latest`: the reading with the latest event time (the larger
//!   reading on a tie); `unique_count`: the number of distinct values of the SKU's `unique_by`
//!   attribute.
//! - The price is that of the latest rate-card version among the readings (a period is priced
//!   by one version, the one in effect at its last reading; a version change mid-period does not
//!   split a peak or a distinct count).
//! - Events: the net number of readings.
//!
//! What leaves for `P` is the difference to what was billed up to the invoice period before, so
//! a late reading that raises the peak becomes an adjustment of exactly the increase.
//!
//! State: the reduce's arrangements: per line, one entry per distinct reading (`max`: per
//! distinct value, `unique_count`: per distinct counted value, `latest`: per reading).

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::difference::{Abelian, Semigroup};
use differential_dataflow::VecCollection;
use meterflow_schemas::catalog::{Aggregation, Catalog, PriceIdx};
use meterflow_schemas::money::Quantity;
use meterflow_schemas::rows::{LineKey, UsageDelta};
use meterflow_schemas::time::{EventTime, Period};
use serde::{Deserialize, Serialize};

use crate::aggregate::{round_end, UsageRecord, UsageSum};
use crate::Epoch;

/// One reading of a non-additive meter. Fields a meter does not look at are zero, so equal
/// readings consolidate: a `max` meter holds one entry per distinct value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reading {
    pub invoice_period: Period,
    pub price: PriceIdx,
    /// `latest` only.
    pub time: EventTime,
    /// `max` and `latest`.
    pub value: Quantity,
    /// `unique_count` only: the counted value's identity.
    pub distinct: u128,
}

impl Reading {
    /// The reading an accepted event (or, with diff `-1`, its void) adds to a non-additive
    /// meter; `None` for additive meters.
    pub fn of(d: &UsageDelta, aggregation: Aggregation) -> Option<(LineKey, Reading, isize)> {
        if aggregation.is_additive() || d.events == 0 {
            return None;
        }
        // A void carries its original's quantity negated and takes one event back.
        let value = Quantity(d.quantity.0 * d.events.signum() as i128);
        let mut r = Reading {
            invoice_period: d.invoice_period,
            price: d.price,
            time: EventTime(0),
            value: Quantity::ZERO,
            distinct: 0,
        };
        match aggregation {
            Aggregation::Max => r.value = value,
            Aggregation::Latest => (r.time, r.value) = (d.time, value),
            Aggregation::UniqueCount => r.distinct = d.distinct,
            Aggregation::Sum | Aggregation::Count => unreachable!("additive meters return above"),
        }
        Some((d.line, r, d.events.signum() as isize))
    }
}

/// Whether a resumed run reloads a line's readings (from `usage_events`) rather than its pricing
/// input (from `line_usage`): only lines that can still change need their readings, and a line
/// whose service period ended before `forget_before` (the committed watermark minus the dedup
/// horizon) can receive no more events.
pub fn reloads_readings(service_period_end: EventTime, forget_before: EventTime) -> bool {
    service_period_end > forget_before
}

/// What a line bills in one invoice period under one price: (price, invoice period, events,
/// quantity), as a difference to the invoice period before.
type Billed = (PriceIdx, Period, i64, Quantity);

/// The pricing input of non-additive meters, from their readings.
pub fn meter_usage<'s>(
    readings: VecCollection<'s, Epoch, (LineKey, Reading), isize>,
    catalog: Arc<Catalog>,
    epochs_per_round: u64,
) -> VecCollection<'s, Epoch, UsageRecord, UsageSum> {
    readings
        .delay(move |t| round_end(*t, epochs_per_round))
        .reduce_named(
            "Meters",
            move |line: &LineKey,
                  input: &[(&Reading, isize)],
                  output: &mut Vec<(Billed, isize)>| {
                let aggregation = catalog.skus[line.sku.ix()].aggregation;
                let latest_price =
                    |p: &PriceIdx| (catalog.price(*p).effective_from, catalog.price(*p).version);
                for (price, period, usage) in period_usage(aggregation, input, latest_price) {
                    output.push(((price, period, usage.events, usage.quantity), 1));
                }
            },
        )
        .explode(|(line, (price, period, events, quantity))| {
            let usage = UsageSum {
                events,
                quantity,
                ..UsageSum::default()
            };
            Some(((price, (line, period)), usage))
        })
}

/// What one line's readings (sorted, as differential hands them over: by invoice period first)
/// bill in each invoice period, as differences to the invoice period before. `version` orders
/// prices by rate-card version.
pub fn period_usage<V: Ord>(
    aggregation: Aggregation,
    input: &[(&Reading, isize)],
    version: impl Fn(&PriceIdx) -> V,
) -> Vec<(PriceIdx, Period, UsageSum)> {
    let mut out = Vec::new();
    // Net count of each reading billed so far, whatever invoice period it came in.
    let mut held: BTreeMap<(PriceIdx, EventTime, Quantity, u128), isize> = BTreeMap::new();
    let mut before: Option<(PriceIdx, UsageSum)> = None;
    let mut i = 0;
    while i < input.len() {
        let period = input[i].0.invoice_period;
        while i < input.len() && input[i].0.invoice_period == period {
            let (r, n) = input[i];
            *held
                .entry((r.price, r.time, r.value, r.distinct))
                .or_default() += n;
            i += 1;
        }
        held.retain(|_, n| *n != 0);
        let now = billed(aggregation, &held, &version);
        let mut give = |price: PriceIdx, usage: UsageSum| {
            if usage.events != 0 || usage.quantity != Quantity::ZERO {
                out.push((price, period, usage));
            }
        };
        match (before, now) {
            (Some((p, b)), Some((q, n))) if p == q => give(p, minus(n, b)),
            (b, n) => {
                if let Some((p, b)) = b {
                    give(p, minus(UsageSum::default(), b));
                }
                if let Some((q, n)) = n {
                    give(q, n);
                }
            }
        }
        before = now;
    }
    out
}

/// `a - b`.
fn minus(a: UsageSum, mut b: UsageSum) -> UsageSum {
    b.negate();
    b.plus_equals(&a);
    b
}

/// The price and usage of a set of readings (those with a positive count).
fn billed<V: Ord>(
    aggregation: Aggregation,
    held: &BTreeMap<(PriceIdx, EventTime, Quantity, u128), isize>,
    version: &impl Fn(&PriceIdx) -> V,
) -> Option<(PriceIdx, UsageSum)> {
    let live = || held.iter().filter(|(_, n)| **n > 0).map(|(k, _)| k);
    let price = live().map(|k| k.0).max_by_key(|p| (version(p), *p))?;
    let events = held.values().map(|n| *n as i64).sum();
    let quantity = match aggregation {
        Aggregation::Max => live().map(|k| k.2).max()?,
        Aggregation::Latest => live().map(|k| (k.1, k.2)).max()?.1,
        Aggregation::UniqueCount => {
            let mut values: Vec<u128> = live().map(|k| k.3).collect();
            values.sort_unstable();
            values.dedup();
            Quantity::from_units(values.len() as i64)
        }
        Aggregation::Sum | Aggregation::Count => return None,
    };
    let usage = UsageSum {
        events,
        quantity,
        ..UsageSum::default()
    };
    Some((price, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(day: u32) -> Period {
        Period(EventTime::from_civil(2026, 11, day))
    }

    fn reading(p: u32, price: u32, time: i64, value: i64, distinct: u128) -> Reading {
        Reading {
            invoice_period: period(p),
            price: PriceIdx(price),
            time: EventTime(time),
            value: Quantity::from_units(value),
            distinct,
        }
    }

    fn run(aggregation: Aggregation, input: &[(Reading, isize)]) -> Vec<(u32, u32, i64, i64)> {
        let mut sorted = input.to_vec();
        sorted.sort();
        let refs: Vec<(&Reading, isize)> = sorted.iter().map(|(r, n)| (r, *n)).collect();
        // Price index order stands for version order here.
        period_usage(aggregation, &refs, |p| p.0)
            .into_iter()
            .map(|(p, per, u)| {
                let day = per.0.civil().day;
                (
                    day,
                    p.0,
                    u.events,
                    (u.quantity.0 / Quantity::SCALE_ONE) as i64,
                )
            })
            .collect()
    }

    #[test]
    fn max_is_the_peak_and_a_void_of_the_peak_falls_back() {
        let r = |v| reading(1, 0, 0, v, 0);
        assert_eq!(
            run(Aggregation::Max, &[(r(5), 1), (r(9), 1), (r(7), 1)]),
            vec![(1, 0, 3, 9)]
        );
        // The peak voided in the same invoice period: the next reading is the peak.
        assert_eq!(
            run(
                Aggregation::Max,
                &[(r(5), 1), (r(9), 1), (r(7), 1), (r(9), -1)]
            ),
            vec![(1, 0, 2, 7)]
        );
        // Two readings of the same value: voiding one keeps the peak.
        assert_eq!(
            run(Aggregation::Max, &[(r(9), 2), (r(9), -1)]),
            vec![(1, 0, 1, 9)]
        );
    }

    #[test]
    fn a_late_reading_adjusts_by_the_increase_and_a_late_void_by_the_decrease() {
        let input = [
            (reading(1, 0, 0, 10, 0), 1),
            (reading(1, 0, 0, 4, 0), 1),
            // A later invoice period: a higher peak arrives late ...
            (reading(2, 0, 0, 25, 0), 1),
            // ... and in the one after, the first peak's void and the late one's void.
            (reading(3, 0, 0, 25, 0), -1),
            (reading(3, 0, 0, 10, 0), -1),
        ];
        assert_eq!(
            run(Aggregation::Max, &input),
            vec![(1, 0, 2, 10), (2, 0, 1, 15), (3, 0, -2, -21)]
        );
    }

    #[test]
    fn latest_is_the_last_reading_by_event_time_not_by_arrival() {
        let input = [
            (reading(1, 0, 300, 7, 0), 1),
            (reading(1, 0, 100, 50, 0), 1),
            (reading(1, 0, 200, 3, 0), 1),
        ];
        assert_eq!(run(Aggregation::Latest, &input), vec![(1, 0, 3, 7)]);
        // A tie on event time: the larger reading.
        let tie = [(reading(1, 0, 300, 7, 0), 1), (reading(1, 0, 300, 8, 0), 1)];
        assert_eq!(run(Aggregation::Latest, &tie), vec![(1, 0, 2, 8)]);
        // A late reading that is earlier changes nothing but the event count.
        let mut late = input.to_vec();
        late.push((reading(2, 0, 50, 99, 0), 1));
        assert_eq!(
            run(Aggregation::Latest, &late),
            vec![(1, 0, 3, 7), (2, 0, 1, 0)]
        );
    }

    #[test]
    fn unique_count_counts_distinct_values_once() {
        let u = |d| reading(1, 0, 0, 0, d);
        let input = [(u(1), 3), (u(2), 1), (u(3), 1), (u(3), -1)];
        assert_eq!(run(Aggregation::UniqueCount, &input), vec![(1, 0, 4, 2)]);
        // A value seen again in a later invoice period is not counted again.
        let late = [
            (u(1), 1),
            (reading(2, 0, 0, 0, 1), 1),
            (reading(2, 0, 0, 0, 9), 1),
        ];
        assert_eq!(
            run(Aggregation::UniqueCount, &late),
            vec![(1, 0, 1, 1), (2, 0, 2, 1)]
        );
    }

    #[test]
    fn the_period_moves_to_the_latest_version_among_its_readings() {
        // Price 0 is version 1, price 1 version 2: a reading under version 2 arriving in the
        // second invoice period moves the whole period's quantity to it.
        let input = [(reading(1, 0, 0, 10, 0), 1), (reading(2, 1, 0, 6, 0), 1)];
        assert_eq!(
            run(Aggregation::Max, &input),
            vec![(1, 0, 1, 10), (2, 0, -1, -10), (2, 1, 2, 10)]
        );
    }

    #[test]
    fn everything_voided_bills_nothing() {
        let input = [(reading(1, 0, 0, 10, 0), 1), (reading(2, 0, 0, 10, 0), -1)];
        assert_eq!(
            run(Aggregation::Max, &input),
            vec![(1, 0, 1, 10), (2, 0, -1, -10)]
        );
    }
}
