//! Usage buckets and anomalies (rules in `meterflow_schemas::anomaly`).
//!
//! (data, time, diff): billable usage is summed per (customer, SKU, bucket) on each worker for a
//! pricing round, and the sums of round `r` leave at `r` once the round is complete. They are
//! exchanged by meter to the worker that owns it, whose [`Detector`] adds them, moves to the
//! watermark after round `r` (folded from the same per-epoch stats dedup judges lateness by)
//! and emits, at `r`:
//! the changed `usage_buckets` rows (old total `-1`, new total `+1`) and the changed anomalies
//! (`+1` when found, `-1` when a later change undoes one). Rounds without usage on a worker still
//! move its detector, so a meter that went quiet is noticed.
//!
//! A resumed run seeds each worker's detector with its meters' buckets and verdicts, and
//! re-emits them at the first round, as every signed table's state expects.
//!
//! State: the detector (bounded by the dedup horizon plus the baseline's reach) and one map of
//! sums per unfinished round (bounded by the source's flow control).

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use meterflow_schemas::anomaly::{
    cost_anomaly, Anomaly, AnomalyRules, Bucket, BucketRow, Detector, MeterKey,
};
use meterflow_schemas::catalog::{Catalog, CustomerIdx, SkuIdx};
use meterflow_schemas::money::Amount;
use meterflow_schemas::rows::{customer_hash, RatedRow, UsageDelta};
use meterflow_schemas::time::{EventTime, Period, PeriodUnit, Span};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::aggregate::{round_end, round_sums};
use crate::decode::EpochStats;
use crate::signed::Signed;
use crate::watermark::WatermarkTracker;
use crate::Epoch;

/// What a resumed run restores: buckets and verdicts held at the last commit.
#[derive(Clone, Default)]
pub struct AnomalySeed {
    pub buckets: Vec<BucketRow>,
    pub anomalies: Vec<Anomaly>,
}

pub struct Anomalies<'s> {
    pub buckets: StreamVec<'s, Epoch, Signed<BucketRow>>,
    pub anomalies: StreamVec<'s, Epoch, Signed<Anomaly>>,
}

/// Where a run starts.
pub struct Start {
    pub first_epoch: Epoch,
    /// A resumed run (its detectors are seeded and re-emit what they hold).
    pub resumed: bool,
    /// The watermark it resumes at, with the partitions' state behind it (see
    /// [`WatermarkTracker::resuming`]).
    pub watermark: WatermarkTracker,
    pub epochs_per_round: u64,
}

type Sum = (MeterKey, EventTime, Bucket);
type Out<D> = OutputBuilder<Epoch, CapacityContainerBuilder<Vec<D>>>;

/// The worker a meter's buckets and verdicts live on: the one that writes its customer's rows
/// (`customer_hash`, as every signed table is written), so bucket and anomaly rows are written
/// where they are computed instead of crossing to another worker, or process, first (a 2-process
/// cluster sends 17% fewer bytes on B1). Restarts seed each worker by the same function.
fn owner(key: &MeterKey) -> u64 {
    customer_hash(key.0)
}

/// `stats`: every epoch's stats on every worker (broadcast), which define the watermark.
pub fn anomalies<'s>(
    usage: StreamVec<'s, Epoch, UsageDelta>,
    stats: StreamVec<'s, Epoch, EpochStats>,
    rules: AnomalyRules,
    horizon: Span,
    catalog: Arc<Catalog>,
    start: Start,
    seed: &AnomalySeed,
) -> Anomalies<'s> {
    let sums = bucket_sums(usage, rules.bucket, start.epochs_per_round);
    let scope = sums.scope();
    let (index, peers) = (scope.index() as u64, scope.peers() as u64);
    let mut detector = Detector::new(rules, horizon, &catalog);
    for b in seed
        .buckets
        .iter()
        .filter(|b| owner(&(b.customer, b.sku)) % peers == index)
    {
        detector.seed_bucket((b.customer, b.sku), b.start, b.usage);
    }
    for a in seed
        .anomalies
        .iter()
        .filter(|a| owner(&(a.customer, a.sku)) % peers == index)
    {
        detector.seed_verdict(a.clone());
    }
    if let Some(w) = start.watermark.floor() {
        detector.resume_at(w);
    }

    let mut builder = OperatorBuilder::new("Anomalies".to_owned(), scope);
    let mut sums_in = builder.new_input(sums, Exchange::new(|s: &Sum| owner(&s.0)));
    let mut stats_in = builder.new_input(stats, Pipeline);
    let (buckets_out, buckets) = builder.new_output();
    let (anomalies_out, anomalies) = builder.new_output();
    let mut buckets_out: Out<Signed<BucketRow>> = OutputBuilder::from(buckets_out);
    let mut anomalies_out: Out<Signed<Anomaly>> = OutputBuilder::from(anomalies_out);
    let k = start.epochs_per_round;
    let first_round = round_end(start.first_epoch, k);
    let mut tracker = start.watermark;
    let mut pending: BTreeMap<Epoch, Vec<Sum>> = BTreeMap::new();
    let mut last_round: Option<Epoch> = None;
    let resumed = start.resumed;

    builder.build(move |mut capabilities| {
        // One capability per output, kept at the next round that may still emit.
        let mut caps: Option<(Capability<Epoch>, Capability<Epoch>)> = {
            let mut c = capabilities.drain(..);
            match (c.next(), c.next()) {
                (Some(mut b), Some(mut a)) => {
                    b.downgrade(&first_round);
                    a.downgrade(&first_round);
                    Some((b, a))
                }
                _ => None,
            }
        };
        let mut reemit = resumed;
        move |frontiers| {
            stats_in.for_each(|_cap, data| data.iter().for_each(|s| tracker.observe(s)));
            sums_in.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let round = round_end(epoch, k);
                let sums = pending.entry(round).or_default();
                for d in data.flat_map(|d| d.drain(..)) {
                    sums.push(d);
                }
            });
            let Some((held_b, held_a)) = caps.as_mut() else {
                return;
            };
            let mut buckets_h = buckets_out.activate();
            let mut anomalies_h = anomalies_out.activate();
            if std::mem::take(&mut reemit) {
                let (rows, verdicts) = detector.held();
                let (cb, ca) = (held_b.delayed(&first_round), held_a.delayed(&first_round));
                let mut s = buckets_h.session(&cb);
                for r in rows {
                    s.give((r, first_round, 1));
                }
                drop(s);
                let mut s = anomalies_h.session(&ca);
                for a in verdicts {
                    s.give((a, first_round, 1));
                }
            }
            // The least time either input may still bring.
            let done = [frontiers[0].frontier(), frontiers[1].frontier()]
                .iter()
                .filter_map(|f| f.iter().min().copied())
                .min();
            // Complete rounds, in order: those with usage, then the last one (for the watermark).
            let complete = |r: Epoch| done.is_none_or(|d| r < d);
            let mut rounds: Vec<Epoch> = pending.keys().copied().filter(|&r| complete(r)).collect();
            let latest = match done {
                None => last_round.max(rounds.last().copied()),
                Some(d) if d > k - 1 => Some(round_end(d - k, k)).filter(|&r| r >= first_round),
                Some(_) => None,
            };
            if let Some(l) = latest {
                if rounds.last().is_none_or(|&r| r < l) && last_round.is_none_or(|r| r < l) {
                    rounds.push(l);
                }
            }
            let mut verdicts = Vec::new();
            for r in rounds {
                let mut sums = pending.remove(&r).unwrap_or_default();
                // Meter by meter, each in time order: a meter's buckets then grow at their end
                // (they come pre-aggregated in hash order, which inserted each new bucket in
                // the middle of its meter's), and one meter is looked up while it is in cache.
                sums.sort_unstable_by_key(|&(key, t, _)| (key, t));
                // One sum per bucket (each worker sends its own): a bucket's change in the round
                // is then its total before (-1) and after (+1), distinct from every other row.
                sums.dedup_by(|next, kept| {
                    let same = (next.0, next.1) == (kept.0, kept.1);
                    if same {
                        kept.2 = kept.2 + next.2;
                    }
                    same
                });
                let (cb, ca) = (held_b.delayed(&r), held_a.delayed(&r));
                let mut s = buckets_h.session(&cb);
                for (key, t, usage) in sums {
                    let (before, after) = detector.add(key, t, usage);
                    if before == after {
                        continue;
                    }
                    let row = |u: Bucket| BucketRow {
                        customer: key.0,
                        sku: key.1,
                        start: t,
                        usage: u,
                    };
                    if before != Bucket::default() {
                        s.give((row(before), r, -1));
                    }
                    if after != Bucket::default() {
                        s.give((row(after), r, 1));
                    }
                }
                drop(s);
                // The watermark after the round: the round's own usage counts (dedup judges an
                // epoch by the watermark before it). At the end of the input this closes every
                // bucket the input has passed, however the input was cut into epochs.
                detector.advance(tracker.watermark_for(r + 1), &mut verdicts);
                let mut s = anomalies_h.session(&ca);
                for (a, n) in verdicts.drain(..) {
                    s.give((a, r, n));
                }
                last_round = Some(r);
            }
            match done {
                None => caps = None,
                Some(d) => {
                    let next = round_end(d, k).max(first_round);
                    if *held_b.time() < next {
                        held_b.downgrade(&next);
                        held_a.downgrade(&next);
                    }
                }
            }
        }
    });
    Anomalies { buckets, anomalies }
}

/// Each round's billable usage on this worker, summed per (meter, bucket start).
fn bucket_sums<'s>(
    usage: StreamVec<'s, Epoch, UsageDelta>,
    bucket: Span,
    epochs_per_round: u64,
) -> StreamVec<'s, Epoch, Sum> {
    use timely::dataflow::operators::vec::Map;
    let ms = bucket.millis();
    round_sums(
        usage,
        "BucketSums",
        epochs_per_round,
        (0, Vec::new()),
        move |d| ((d.line.customer, d.line.sku), d.time.0.div_euclid(ms)),
    )
    .map(move |((key, b), _, sum)| {
        let usage = Bucket {
            events: sum.events,
            quantity: sum.quantity,
        };
        (key, EventTime(b * ms), usage)
    })
}

/// Cost anomalies: per customer, SKU and service period, the gross margin of the usage whose
/// rate card gives a `unit_cost` (rules in `meterflow_schemas::anomaly::cost_anomaly`).
///
/// (data, time, diff): a differential `reduce` over the rated rows (one per tier and rate-card
/// version), so a margin that falls under the floor inserts an anomaly and one that recovers
/// (a correction, a late event at a better price) retracts it. A new cost changes the row.
///
/// State: one arrangement entry per rated row of a costed price, one per anomaly.
pub fn cost_anomalies<'s>(
    rated: VecCollection<'s, Epoch, RatedRow, isize>,
    catalog: Arc<Catalog>,
    rules: AnomalyRules,
    unit: PeriodUnit,
) -> VecCollection<'s, Epoch, Anomaly, isize> {
    let c = catalog.clone();
    rated
        .flat_map(move |r| {
            let unit_cost = c.price(r.price).unit_cost?;
            Some((
                (r.key.customer, r.key.sku, r.key.service_period),
                (r.amount, unit_cost.times(r.quantity)),
            ))
        })
        .reduce_named(
            "CostAnomalies",
            move |&(customer, sku, period): &(CustomerIdx, SkuIdx, Period),
                  input: &[(&(Amount, Amount), isize)],
                  output: &mut Vec<(Anomaly, isize)>| {
                let (mut revenue, mut cost) = (Amount::ZERO, Amount::ZERO);
                for ((a, c), n) in input {
                    revenue += Amount(a.0 * *n as i128);
                    cost += Amount(c.0 * *n as i128);
                }
                let window = (period.0, unit.end_of(period));
                if let Some(a) = cost_anomaly(&rules, (customer, sku), window, revenue, cost) {
                    output.push((a, 1));
                }
            },
        )
        .map(|(_, a)| a)
}
