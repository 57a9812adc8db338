//! Dedup by idempotency key, with lateness decided against the event-time watermark.
//!
//! Inputs: valid events, exchanged by key (corrections by their original's key, so the original's
//! state is local), and the broadcast per-epoch stats that define the watermark.
//!
//! (data, time, diff): events of epoch `t` are decided once every earlier epoch is complete on
//! both inputs (so the watermark `W(t)` is known and earlier epochs went first), each against the
//! later of `W(t)` and its partition's watermark (see `watermark.rs`), in arrival order,
//! which within an epoch is input order. Every event leaves at time `t` in exactly one of:
//! `accepted` (with service/invoice period and arrival class, plus a compact `usage` delta when
//! billable), `duplicates`, or `rejections` (`timestamp_too_old`, `conflicting_duplicate`,
//! `correction_*`). Capabilities for `t` are held only while epoch `t` is stashed.
//!
//! State: a [`DedupTable`] of keys within the dedup horizon (bounded by `W - horizon`) and the
//! stash of not-yet-decidable epochs (bounded by the source's flow control).

use std::collections::BTreeMap;
use std::sync::Arc;

use meterflow_schemas::catalog::{
    distinct_value, Aggregation, Catalog, ContractIdx, CustomerIdx, PriceIdx, SkuIdx,
};
use meterflow_schemas::event::{CorrectionAction, UsageEvent};
use meterflow_schemas::hashing::EventKey;
use meterflow_schemas::lineage::Lineage;
use meterflow_schemas::money::{Amount, Quantity};
use meterflow_schemas::pricing::percentage::limit_adjustment;
use meterflow_schemas::pricing::PriceModel;
use meterflow_schemas::rejection::{Reason, Rejection};
use meterflow_schemas::rows::{AcceptedEvent, Counts, DuplicateRow, LineKey, UsageDelta};
use meterflow_schemas::time::{EventTime, Period};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::decode::{Bound, EpochStats};
use crate::dedup_table::{payload_of, DedupTable, Seen};
use crate::watermark::{EpochLateness, LatenessPolicy, Verdict, WatermarkTracker};
use crate::Epoch;

pub struct Deduped<'s> {
    pub accepted: StreamVec<'s, Epoch, AcceptedEvent>,
    pub usage: StreamVec<'s, Epoch, UsageDelta>,
    pub duplicates: StreamVec<'s, Epoch, DuplicateRow>,
    pub rejections: StreamVec<'s, Epoch, Rejection>,
    pub counts: StreamVec<'s, Epoch, Counts>,
}

const PREFETCH_DISTANCE: usize = 8;

type Out<D> = OutputBuilder<Epoch, CapacityContainerBuilder<Vec<D>>>;

/// One idempotency key of an accepted event, as a resumed run reloads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupSeed {
    pub key: EventKey,
    /// Which worker holds the key: the route of the event that carried it, so a correction's
    /// key lives with its original's (see [`UsageEvent::route`]), where its retries are judged.
    pub route: u64,
    pub fingerprint: u64,
    pub time: EventTime,
    pub voided: bool,
}

/// Where each event of an epoch went.
enum Decision {
    Accept(AcceptedEvent),
    Duplicate(DuplicateRow),
    Reject(Rejection),
}

/// The per-worker dedup state machine, separate from the operator plumbing so it can be tested
/// directly.
pub struct Deduplicator {
    policy: LatenessPolicy,
    catalog: Arc<Catalog>,
    billable_environments: Arc<[String]>,
    table: DedupTable,
    reported_keys: i64,
    reported_bytes: i64,
    /// The epoch's rules, against its watermark.
    lateness: EpochLateness,
    /// The rules against the last partition watermark ahead of the epoch's.
    ahead: EpochLateness,
}

impl Deduplicator {
    pub fn new(
        policy: LatenessPolicy,
        catalog: Arc<Catalog>,
        billable_environments: Arc<[String]>,
    ) -> Deduplicator {
        Deduplicator {
            policy,
            catalog,
            billable_environments,
            table: DedupTable::default(),
            reported_keys: 0,
            reported_bytes: 0,
            lateness: policy.at(EventTime::MIN),
            ahead: policy.at(EventTime::MIN),
        }
    }

    /// Loads keys remembered by an earlier run (rebuilt from `usage_events` on resume).
    pub fn seed<'a>(&mut self, seeds: impl Iterator<Item = &'a DedupSeed>) {
        for s in seeds {
            self.table.insert_new(s.key, s.fingerprint, s.time);
            if s.voided {
                self.table.mark_voided(s.key);
            }
        }
    }

    pub fn table(&self) -> &DedupTable {
        &self.table
    }

    /// Starts an epoch whose watermark is `w`.
    pub fn begin_epoch(&mut self, w: EventTime) {
        self.table.forget_before(self.policy.forget_before(w));
        self.lateness = self.policy.at(w);
    }

    /// Judges `ev` against the later of the epoch's watermark and its partition's.
    fn classify(&mut self, ev: &UsageEvent) -> (Verdict, EventTime) {
        if ev.stream_watermark <= self.lateness.watermark() {
            return (self.lateness.classify(ev.time), self.lateness.watermark());
        }
        self.ahead.move_to(&self.policy, ev.stream_watermark);
        (self.ahead.classify(ev.time), ev.stream_watermark)
    }

    fn decide(&mut self, ev: UsageEvent, counts: &mut Counts) -> Decision {
        let (verdict, w) = self.classify(&ev);
        let (service, invoice, arrival) = match verdict {
            Verdict::TooOld => {
                let msg = format!(
                    "event time {} is older than the watermark {w} minus the dedup horizon {}",
                    ev.time, self.policy.dedup_horizon
                );
                return Decision::Reject(self.rejection(&ev, Reason::TimestampTooOld, msg));
            }
            Verdict::Accept {
                service,
                invoice,
                arrival,
            } => (service, invoice, arrival),
        };
        if let Some(c) = &ev.correction {
            if self.table.get(ev.key).is_none() {
                match self.table.get(c.original_key) {
                    None => {
                        let msg = format!(
                            "original event `{}` was not seen within the dedup horizon",
                            c.original_event_id
                        );
                        return Decision::Reject(self.rejection(
                            &ev,
                            Reason::CorrectionUnknownOriginal,
                            msg,
                        ));
                    }
                    Some(o) if o.voided => {
                        let msg = format!(
                            "original event `{}` was already voided",
                            c.original_event_id
                        );
                        return Decision::Reject(self.rejection(
                            &ev,
                            Reason::CorrectionAfterVoid,
                            msg,
                        ));
                    }
                    Some(o)
                        if c.action == CorrectionAction::Void
                            && o.payload != payload_of(c.original_fingerprint) =>
                    {
                        let msg = format!(
                            "void does not repeat the fields of `{}` with the quantity negated",
                            c.original_event_id
                        );
                        return Decision::Reject(self.rejection(
                            &ev,
                            Reason::CorrectionMismatch,
                            msg,
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        match self.table.insert_new(ev.key, ev.fingerprint, ev.time) {
            Seen::Duplicate => {
                counts.duplicates += 1;
                Decision::Duplicate(DuplicateRow {
                    event_id: ev.event_id,
                    key: ev.key,
                    time: ev.time,
                    lineage: ev.lineage,
                })
            }
            Seen::Conflict => {
                let msg = format!(
                    "event_id `{}` was already accepted with a different payload",
                    ev.event_id
                );
                Decision::Reject(self.rejection(&ev, Reason::ConflictingDuplicate, msg))
            }
            Seen::New => {
                if let Some(c) = &ev.correction {
                    counts.corrections += 1;
                    if c.action == CorrectionAction::Void {
                        self.table.mark_voided(c.original_key);
                    }
                }
                counts.accepted += 1;
                match arrival {
                    meterflow_schemas::rows::Arrival::OutOfOrder => counts.out_of_order += 1,
                    meterflow_schemas::rows::Arrival::Late => counts.late += 1,
                    meterflow_schemas::rows::Arrival::OnTime => {}
                }
                Decision::Accept(AcceptedEvent {
                    event: ev,
                    service_period: service,
                    invoice_period: invoice,
                    arrival,
                })
            }
        }
    }

    fn rejection(&self, ev: &UsageEvent, reason: Reason, message: String) -> Rejection {
        let mut r = Rejection::new(reason, None, message);
        r.event_id = Some(ev.event_id.clone());
        r.raw = ev
            .to_native_json(&self.catalog, &self.billable_environments)
            .into();
        r.lineage = ev.lineage;
        r
    }

    /// The compact pricing input of an accepted billable event.
    pub fn usage_of(&self, a: &AcceptedEvent) -> UsageDelta {
        let ev = &a.event;
        usage_delta(
            &self.catalog,
            BilledEvent {
                customer: ev.customer,
                contract: ev.contract,
                sku: ev.sku,
                price: ev.price,
                service_period: a.service_period,
                invoice_period: a.invoice_period,
                line_events: ev.line_events(),
                quantity: ev.quantity,
                time: ev.time,
                attributes: ev.metadata.as_deref().and_then(|m| m.attributes.as_deref()),
            },
        )
    }

    /// Table size changes since the last report, as gauge deltas.
    fn report_table(&mut self, counts: &mut Counts) {
        let keys = self.table.len() as i64;
        let bytes = self.table.allocated_bytes() as i64;
        counts.dedup_keys += keys - self.reported_keys;
        counts.dedup_bytes += bytes - self.reported_bytes;
        self.reported_keys = keys;
        self.reported_bytes = bytes;
    }
}

/// Capabilities for each output at one epoch.
struct EpochCaps {
    caps: Vec<Capability<Epoch>>,
}

/// An epoch's events in input order: by source, partition, offset and record. Containers from
/// different readers (stripes of a file, other workers' partitions) arrive in any order, and
/// the first copy of an id, or an original before its correction, must not depend on that.
/// Within a Kafka partition this is the partition's order; across partitions no order exists,
/// and this one is at least the same in every run.
///
/// Usually each container is a sorted run and runs do not overlap (file stripes): then only the
/// containers are reordered, and no event moves.
fn in_stream_order(mut batch: Vec<Vec<UsageEvent>>) -> Vec<Vec<UsageEvent>> {
    batch.retain(|c| !c.is_empty());
    let sorted = |c: &Vec<UsageEvent>| c.windows(2).all(|w| w[0].lineage <= w[1].lineage);
    if batch.iter().all(sorted) {
        batch.sort_by_key(|c| c[0].lineage);
        let disjoint = batch
            .windows(2)
            .all(|w| w[0][w[0].len() - 1].lineage <= w[1][0].lineage);
        if disjoint {
            return batch;
        }
    }
    let mut events: Vec<UsageEvent> = batch.into_iter().flatten().collect();
    let mut order: Vec<(Lineage, u32)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.lineage, i as u32))
        .collect();
    order.sort_unstable();
    let mut slots: Vec<Option<UsageEvent>> = events.drain(..).map(Some).collect();
    events.extend(order.iter().filter_map(|&(_, i)| slots[i as usize].take()));
    vec![events]
}

pub fn dedup<'s>(
    events: StreamVec<'s, Epoch, Bound>,
    stats: StreamVec<'s, Epoch, EpochStats>,
    dedup: Deduplicator,
    mut tracker: WatermarkTracker,
) -> Deduped<'s> {
    let mut builder = OperatorBuilder::new("Dedup".to_owned(), events.scope());
    // Each item holds the events of a chunk this worker owns (see `decode::Bound`).
    let mut events_in = builder.new_input(events, Exchange::new(|b: &Bound| b.0));
    let mut stats_in = builder.new_input(stats, Pipeline);
    let (accepted_out, accepted) = builder.new_output();
    let (usage_out, usage) = builder.new_output();
    let (duplicates_out, duplicates) = builder.new_output();
    let (rejections_out, rejections) = builder.new_output();
    let (counts_out, counts) = builder.new_output();
    let mut accepted_out: Out<AcceptedEvent> = OutputBuilder::from(accepted_out);
    let mut usage_out: Out<UsageDelta> = OutputBuilder::from(usage_out);
    let mut duplicates_out: Out<DuplicateRow> = OutputBuilder::from(duplicates_out);
    let mut rejections_out: Out<Rejection> = OutputBuilder::from(rejections_out);
    let mut counts_out: Out<Counts> = OutputBuilder::from(counts_out);

    let mut dedup = dedup;
    let mut stash: BTreeMap<Epoch, (EpochCaps, Vec<Vec<UsageEvent>>)> = BTreeMap::new();
    let mut current: Option<Epoch> = None;

    builder.build(move |_capabilities| {
        move |frontiers| {
            stats_in.for_each(|_cap, data| data.iter().for_each(|s| tracker.observe(s)));
            events_in.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let entry = stash.entry(epoch).or_insert_with(|| {
                    (
                        EpochCaps {
                            caps: (0..5).map(|port| cap.delayed(&epoch, port)).collect(),
                        },
                        Vec::new(),
                    )
                });
                // Keep the chunks' runs as they came: no copying of events.
                for container in data {
                    entry
                        .1
                        .extend(container.drain(..).map(|(_, events)| events));
                }
            });

            let (events_frontier, stats_frontier) =
                (frontiers[0].frontier(), frontiers[1].frontier());
            while let Some(entry) = stash.first_entry() {
                let epoch = *entry.key();
                if events_frontier.less_than(&epoch) || stats_frontier.less_than(&epoch) {
                    break;
                }
                if current != Some(epoch) {
                    dedup.begin_epoch(tracker.watermark_for(epoch));
                    current = Some(epoch);
                }
                let (caps, batch) = entry.remove();
                let [accepted_cap, usage_cap, duplicates_cap, rejections_cap, counts_cap] =
                    &caps.caps[..]
                else {
                    unreachable!("five outputs")
                };
                let mut accepted_h = accepted_out.activate();
                let mut usage_h = usage_out.activate();
                let mut duplicates_h = duplicates_out.activate();
                let mut rejections_h = rejections_out.activate();
                let mut accepted_s = accepted_h.session(accepted_cap);
                let mut usage_s = usage_h.session(usage_cap);
                let mut duplicates_s = duplicates_h.session(duplicates_cap);
                let mut rejections_s = rejections_h.session(rejections_cap);
                let mut counts = Counts::default();
                let batch = in_stream_order(batch);
                // Keys a few events ahead are prefetched: the table is large and lookups are random.
                let keys: Vec<EventKey> = batch.iter().flatten().map(|e| e.key).collect();
                for (i, ev) in batch.into_iter().flatten().enumerate() {
                    if let Some(ahead) = keys.get(i + PREFETCH_DISTANCE) {
                        dedup.table().prefetch(*ahead);
                    }
                    match dedup.decide(ev, &mut counts) {
                        Decision::Accept(a) => {
                            if a.event.billable() {
                                counts.billable += 1;
                                usage_s.give(dedup.usage_of(&a));
                            }
                            accepted_s.give(a);
                        }
                        Decision::Duplicate(d) => duplicates_s.give(d),
                        Decision::Reject(r) => {
                            counts.reject(r.reason);
                            rejections_s.give(r);
                        }
                    }
                }
                dedup.report_table(&mut counts);
                counts_out.activate().session(counts_cap).give(counts);
            }
        }
    });
    Deduped {
        accepted,
        usage,
        duplicates,
        rejections,
        counts,
    }
}

/// What pricing needs of one accepted billable event: from the dataflow, or read back from
/// `usage_events` when a restart re-rates usage under a changed catalog.
pub struct BilledEvent<'a> {
    pub customer: CustomerIdx,
    pub contract: ContractIdx,
    pub sku: SkuIdx,
    pub price: PriceIdx,
    pub service_period: Period,
    pub invoice_period: Period,
    /// +1, or -1 for a void, 0 for an amend (see `UsageEvent::line_events`).
    pub line_events: i64,
    /// Signed: a void carries minus its original's quantity.
    pub quantity: Quantity,
    pub time: EventTime,
    pub attributes: Option<&'a str>,
}

/// The compact pricing input of a billed event.
pub fn usage_delta(catalog: &Catalog, e: BilledEvent) -> UsageDelta {
    let sku = &catalog.skus[e.sku.ix()];
    UsageDelta {
        line: LineKey {
            customer: e.customer,
            contract: e.contract,
            sku: e.sku,
            region: catalog.price(e.price).region,
            service_period: e.service_period,
        },
        invoice_period: e.invoice_period,
        price: e.price,
        events: e.line_events,
        quantity: match sku.aggregation {
            Aggregation::Count => Quantity::from_units(e.line_events),
            _ => e.quantity,
        },
        time: e.time,
        distinct: match (&sku.aggregation, &sku.unique_by) {
            // Validation rejected events without the attribute.
            (Aggregation::UniqueCount, Some(key)) => {
                distinct_value(e.attributes, key).unwrap_or_default()
            }
            _ => 0,
        },
        fee_adjustment: match &catalog.price(e.price).model {
            // A void takes back its original's adjustment (amends were rejected).
            PriceModel::Percentage(p) if p.has_limits() => {
                let sign = e.line_events.signum() as i128;
                let original = Quantity(e.quantity.0 * sign);
                Amount(limit_adjustment(p, original).0 * sign)
            }
            _ => Amount::ZERO,
        },
    }
}
