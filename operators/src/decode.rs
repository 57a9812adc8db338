//! Decode + validate: splits chunks into records and validates each against the event contract
//! and the catalog.
//!
//! (data, time, diff): for a chunk at epoch `t`, emits at `t` every valid event on `events`, every
//! bad record on `rejections` (raw payload, reason, message, lineage), one [`EpochStats`] on
//! `stats` (the latest valid event time in the chunk and, per Kafka partition, read so far, which
//! feed the watermark) and the chunk's [`Counts`]. Each Kafka event carries the latest valid time
//! before it in its partition (`stream_watermark`), which lateness is judged against.
//!
//! State: the latest valid time per Kafka partition (one entry per partition, restored from the
//! commit a resumed run continues from) and the validator's scratch buffer. Holds no
//! capabilities.

use std::collections::BTreeMap;
use std::sync::Arc;

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::event::UsageEvent;
use meterflow_schemas::hashing::dedup_worker;
use meterflow_schemas::lineage::Lineage;
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::rows::Counts;
use meterflow_schemas::time::EventTime;
use meterflow_schemas::validate::{ValidationRules, Validator};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use crate::source::{recycle, BufferPool, Chunk, MessageSpan, Position};
use crate::Epoch;
use meterflow_schemas::lag::{bucket, LagHistogram, BUCKETS};

/// What one chunk says about event time and input progress.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    pub epoch: Epoch,
    /// The latest event time among the chunk's valid events.
    pub max_time: Option<EventTime>,
    /// Where the reader stands after the chunk (Kafka partitions), for progress commits.
    pub positions: Vec<Position>,
    /// Per Kafka partition of the reader: the latest valid event time read from it so far (this
    /// chunk included) and whether the partition had been read to its end (per-partition
    /// watermarks).
    pub partitions: Vec<PartitionTime>,
    /// Per partition read (a file is partition 0): when the chunk was decoded, and how far its
    /// accepted events' times lay behind that (metering lag).
    pub lag: Vec<ChunkLag>,
}

/// How far behind the clock a chunk's accepted events of one partition were when read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLag {
    pub source: u32,
    pub partition: i32,
    pub received: EventTime,
    pub event_to_received: LagHistogram,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionTime {
    pub source: u32,
    pub partition: i32,
    pub max_time: Option<EventTime>,
    pub idle: bool,
}

/// The valid events of one chunk that one worker deduplicates, in input order: `(worker,
/// events)`. A chunk's events cross to their key's worker as one item per worker instead of one
/// item each, so an event is moved once on its way (into this vector), not copied again into an
/// exchange buffer, and a cluster sends a few large messages per chunk instead of one per 8 KiB.
pub type Bound = (u64, Vec<UsageEvent>);

pub struct Decoded<'s> {
    pub events: StreamVec<'s, Epoch, Bound>,
    pub rejections: StreamVec<'s, Epoch, Rejection>,
    pub stats: StreamVec<'s, Epoch, EpochStats>,
    pub counts: StreamVec<'s, Epoch, Counts>,
}

type Out<D> = OutputBuilder<Epoch, CapacityContainerBuilder<Vec<D>>>;

/// `resumed`: the partitions' state at the commit a resumed run continues from.
pub fn decode<'s>(
    chunks: StreamVec<'s, Epoch, Chunk>,
    pool: BufferPool,
    rules: Arc<ValidationRules>,
    catalog: Arc<Catalog>,
    resumed: &[PartitionTime],
) -> Decoded<'s> {
    let peers = chunks.scope().peers();
    let mut builder = OperatorBuilder::new("Decode".to_owned(), chunks.scope());
    let mut input = builder.new_input(chunks, Pipeline);
    let (events_out, events) = builder.new_output();
    let (rejections_out, rejections) = builder.new_output();
    let (stats_out, stats) = builder.new_output();
    let (counts_out, counts) = builder.new_output();
    let mut events_out: Out<Bound> = OutputBuilder::from(events_out);
    let mut rejections_out: Out<Rejection> = OutputBuilder::from(rejections_out);
    let mut stats_out: Out<EpochStats> = OutputBuilder::from(stats_out);
    let mut counts_out: Out<Counts> = OutputBuilder::from(counts_out);
    let mut validator = Validator::new(rules, catalog);
    // Per partition: the latest valid event time read from it, across chunks and restarts.
    // Per partition slot of the chunk being decoded: lag counts per bucket, and the largest.
    let mut lag_counts: Vec<(Vec<u32>, u64)> = Vec::new();
    let mut read_through: BTreeMap<(u32, i32), Option<EventTime>> = resumed
        .iter()
        .map(|p| ((p.source, p.partition), p.max_time))
        .collect();
    // Each worker's share of the last chunk: the next share is allocated at about that size.
    let mut last_share: Vec<usize> = vec![0; peers];

    builder.build(move |_capabilities| {
        move |_frontiers| {
            let mut events_h = events_out.activate();
            let mut rejections_h = rejections_out.activate();
            let mut stats_h = stats_out.activate();
            let mut counts_h = counts_out.activate();
            input.for_each_stamp(|cap, data| {
                let mut events_s = events_h.session(&cap);
                let mut rejections_s = rejections_h.session(&cap);
                let now = EventTime::now();
                for mut chunk in data.flat_map(|d| d.drain(..)) {
                    let mut counts = Counts {
                        bytes: chunk.bytes.len() as u64,
                        ..Counts::default()
                    };
                    let mut max_time: Option<EventTime> = None;
                    let mut partitions: Vec<PartitionTime> = chunk
                        .partitions
                        .iter()
                        .map(|p| PartitionTime {
                            source: p.source,
                            partition: p.partition,
                            max_time: read_through
                                .get(&(p.source, p.partition))
                                .copied()
                                .flatten(),
                            idle: p.idle,
                        })
                        .collect();
                    let mut bound: Vec<Vec<UsageEvent>> = last_share
                        .iter()
                        .map(|&n| Vec::with_capacity(n + n / 8))
                        .collect();
                    let mut last = 0;
                    let slots = partitions.len().max(1);
                    if lag_counts.len() < slots {
                        lag_counts.resize_with(slots, || (vec![0; BUCKETS], 0));
                    }
                    for_each_record(&chunk, |lineage, line, message| {
                        counts.received += 1;
                        match validator.validate(line, lineage, now) {
                            Ok(mut ev) => {
                                if let Some(m) = message {
                                    ev.kafka = chunk.kafka_meta(m);
                                }
                                max_time = max_time.max(Some(ev.time));
                                // Messages come in runs from one partition: check the last one first.
                                let same = |p: &PartitionTime| {
                                    p.source == ev.lineage.source
                                        && p.partition == ev.lineage.partition
                                };
                                if !partitions.get(last).is_some_and(same) {
                                    last = partitions.iter().position(same).unwrap_or(last);
                                }
                                let slot = match partitions.get_mut(last).filter(|p| same(p)) {
                                    Some(p) => {
                                        ev.stream_watermark = p.max_time.unwrap_or(EventTime::MIN);
                                        p.max_time = p.max_time.max(Some(ev.time));
                                        last
                                    }
                                    None => 0,
                                };
                                let lag = now.0.saturating_sub(ev.time.0).max(0) as u64;
                                let (counts, max) = &mut lag_counts[slot];
                                counts[bucket(lag) as usize] += 1;
                                *max = (*max).max(lag);
                                bound[dedup_worker(ev.route(), peers)].push(ev);
                            }
                            Err(mut r) => {
                                counts.reject(r.reason);
                                if let Some(m) = message {
                                    r.kafka = chunk.kafka_meta(m);
                                }
                                rejections_s.give(r);
                            }
                        }
                    });
                    for (worker, events) in bound.into_iter().enumerate() {
                        last_share[worker] = events.len();
                        if !events.is_empty() {
                            events_s.give((worker as u64, events));
                        }
                    }
                    for p in &partitions {
                        read_through.insert((p.source, p.partition), p.max_time);
                    }
                    let mut lag = Vec::new();
                    for (slot, (counts, max)) in lag_counts.iter_mut().take(slots).enumerate() {
                        if *max == 0 && counts.iter().all(|n| *n == 0) {
                            continue;
                        }
                        let (source, partition) = partitions
                            .get(slot)
                            .map_or((chunk.source, 0), |p| (p.source, p.partition));
                        let mut h = LagHistogram::default();
                        h.add_dense(counts, *max);
                        counts.iter_mut().for_each(|n| *n = 0);
                        *max = 0;
                        lag.push(ChunkLag {
                            source,
                            partition,
                            received: now,
                            event_to_received: h,
                        });
                    }
                    stats_h.session(&cap).give(EpochStats {
                        epoch: chunk.epoch,
                        max_time,
                        positions: std::mem::take(&mut chunk.positions),
                        partitions,
                        lag,
                    });
                    counts_h.session(&cap).give(counts);
                    recycle(&pool, chunk.bytes);
                }
            });
        }
    });
    Decoded {
        events,
        rejections,
        stats,
        counts,
    }
}

/// The records of a chunk with their lineage: the lines of a file chunk, or the events of each
/// message — one JSON object, newline-delimited objects, or a JSON array of objects (batches
/// are first-class). A message that is an unreadable array, or empty, is one (bad) record, so it
/// is rejected rather than lost.
pub fn for_each_record(chunk: &Chunk, mut f: impl FnMut(Lineage, &[u8], Option<&MessageSpan>)) {
    if chunk.messages.is_empty() {
        for (offset, line) in records(&chunk.bytes) {
            f(
                Lineage {
                    source: chunk.source,
                    partition: 0,
                    offset: chunk.base_offset + offset as u64,
                    record: 0,
                },
                line,
                None,
            );
        }
        return;
    }
    for m in &chunk.messages {
        let payload = &chunk.bytes[m.start as usize..(m.start + m.len) as usize];
        let base = Lineage {
            source: m.source,
            partition: m.partition,
            offset: m.offset,
            record: 0,
        };
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => {
                match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(payload) {
                    Ok(items) => {
                        for (i, item) in items.iter().enumerate() {
                            f(
                                Lineage {
                                    record: i as u32,
                                    ..base
                                },
                                item.get().as_bytes(),
                                Some(m),
                            );
                        }
                    }
                    Err(_) => f(base, payload, Some(m)),
                }
            }
            Some(_) => {
                for (i, (_, line)) in records(payload).enumerate() {
                    f(
                        Lineage {
                            record: i as u32,
                            ..base
                        },
                        line,
                        Some(m),
                    );
                }
            }
            None => f(base, payload, Some(m)),
        }
    }
}

/// The non-blank lines of a chunk with their offsets; a trailing `\r` is dropped.
pub fn records(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    std::iter::from_fn(move || loop {
        if start >= bytes.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let at = start;
        let mut line = &bytes[start..end];
        start = end + 1;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.is_empty()
            || (line[0].is_ascii_whitespace() && line.iter().all(|b| b.is_ascii_whitespace()))
        {
            continue;
        }
        return Some((at, line));
    })
}
