//! Metering lag: how long usage takes from happening (event time) to being read (received) and
//! to being billed durably (committed). Kept as log-linear histograms of milliseconds, which
//! merge exactly across chunks, epochs, workers and commits, and give percentiles within 1/16
//! (6.25%) of the true value; the maximum is kept exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two.
const SUB: u32 = 16;
/// Values below this are their own bucket.
const LINEAR: u64 = 2 * SUB as u64;

/// The bucket of a lag in milliseconds.
pub fn bucket(ms: u64) -> u16 {
    if ms < LINEAR {
        return ms as u16;
    }
    let e = 63 - ms.leading_zeros(); // ≥ 5
    let sub = (ms >> (e - 4)) as u32 & (SUB - 1);
    (LINEAR as u32 + (e - 5) * SUB + sub) as u16
}

/// The smallest lag a bucket holds, and how many milliseconds it spans.
fn span(b: u16) -> (u64, u64) {
    let b = u64::from(b);
    if b < LINEAR {
        return (b, 1);
    }
    let e = (b - LINEAR) / u64::from(SUB) + 5;
    let sub = (b - LINEAR) % u64::from(SUB);
    ((u64::from(SUB) + sub) << (e - 4), 1 << (e - 4))
}

/// The smallest lag a bucket holds.
pub fn lower(b: u16) -> u64 {
    span(b).0
}

/// The largest lag a bucket holds.
pub fn upper(b: u16) -> u64 {
    let (low, width) = span(b);
    low + (width - 1)
}

/// A histogram of lags in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagHistogram {
    /// Count per bucket.
    pub buckets: BTreeMap<u16, u64>,
    /// The largest lag recorded, exactly.
    pub max_ms: u64,
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagSummary {
    pub events: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LagHistogram {
    pub fn record(&mut self, ms: u64, n: u64) {
        if n == 0 {
            return;
        }
        *self.buckets.entry(bucket(ms)).or_default() += n;
        self.max_ms = self.max_ms.max(ms);
    }

    /// Adds a dense array of bucket counts (as a chunk's decoding fills it).
    pub fn add_dense(&mut self, dense: &[u32], max_ms: u64) {
        for (b, n) in dense.iter().enumerate().filter(|(_, n)| **n > 0) {
            *self.buckets.entry(b as u16).or_default() += u64::from(*n);
        }
        self.max_ms = self.max_ms.max(max_ms);
    }

    pub fn merge(&mut self, o: &LagHistogram) {
        for (b, n) in &o.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
        self.max_ms = self.max_ms.max(o.max_ms);
    }

    /// Every lag moved `ms` later (what a stage that took `ms` adds): each bucket's lags are
    /// taken at its middle, so the result is within a bucket's width.
    pub fn shifted(&self, ms: u64) -> LagHistogram {
        let mut out = LagHistogram::default();
        for (b, n) in &self.buckets {
            let middle = lower(*b) + (upper(*b) - lower(*b)) / 2;
            out.record(middle.saturating_add(ms), *n);
        }
        out.max_ms = self.max_ms.saturating_add(ms);
        out
    }

    pub fn events(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The smallest bucket bound at or under which a share `q` of the lags lie (never above
    /// the exact maximum).
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.events();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return upper(*b).min(self.max_ms);
            }
        }
        self.max_ms
    }

    pub fn summary(&self) -> LagSummary {
        LagSummary {
            events: self.events(),
            p50_ms: self.quantile(0.5),
            p95_ms: self.quantile(0.95),
            p99_ms: self.quantile(0.99),
            max_ms: self.max_ms,
        }
    }
}

/// How many buckets a dense array needs to hold every lag up to `u64::MAX`.
pub const BUCKETS: usize = LINEAR as usize + (64 - 5) * SUB as usize;

/// The stages of the metering lag, by name, in order.
pub const STAGES: [&str; 3] = [
    "event_to_received",
    "received_to_committed",
    "event_to_committed",
];

/// The lag of one source partition over some epochs, stage by stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub source: String,
    pub partition: i32,
    /// Event time → read by the pipeline.
    pub event_to_received: LagHistogram,
    /// Read → every output durable and the input position committed.
    pub received_to_committed: LagHistogram,
    /// Event time → committed: the metering lag.
    pub event_to_committed: LagHistogram,
}

impl PartitionLag {
    pub fn merge(&mut self, o: &PartitionLag) {
        self.event_to_received.merge(&o.event_to_received);
        self.received_to_committed.merge(&o.received_to_committed);
        self.event_to_committed.merge(&o.event_to_committed);
    }

    /// The stages by name ([`STAGES`]).
    pub fn stages(&self) -> [(&'static str, &LagHistogram); 3] {
        let [a, b, c] = STAGES;
        [
            (a, &self.event_to_received),
            (b, &self.received_to_committed),
            (c, &self.event_to_committed),
        ]
    }
}

/// Merges lags per (source, partition).
pub fn merge_into(into: &mut Vec<PartitionLag>, more: &[PartitionLag]) {
    for m in more {
        match into
            .iter_mut()
            .find(|p| p.source == m.source && p.partition == m.partition)
        {
            Some(p) => p.merge(m),
            None => into.push(m.clone()),
        }
    }
    into.sort_by(|a, b| (&a.source, a.partition).cmp(&(&b.source, b.partition)));
}

/// One row of the `metering_lag` table: a stage's percentiles for a period and partition
/// (`*` source for all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lagged {
    pub computed_at: crate::time::EventTime,
    pub run_id: String,
    pub period: String,
    pub source: String,
    pub partition: i32,
    pub stage: &'static str,
    pub summary: LagSummary,
}

/// The rows of lags per period and partition: each partition's, and all partitions' (`*`).
pub fn rows(by_period: &BTreeMap<String, Vec<PartitionLag>>) -> Vec<Lagged> {
    let mut out = Vec::new();
    for (period, partitions) in by_period {
        let mut all = PartitionLag {
            source: "*".into(),
            partition: -1,
            ..PartitionLag::default()
        };
        for p in partitions {
            all.merge(p);
        }
        for p in partitions.iter().chain(std::iter::once(&all)) {
            for (stage, h) in p.stages() {
                out.push(Lagged {
                    computed_at: crate::time::EventTime::MIN,
                    run_id: String::new(),
                    period: period.clone(),
                    source: p.source.clone(),
                    partition: p.partition,
                    stage,
                    summary: h.summary(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lags_of_years_keep_their_percentiles() {
        // An event stamped decades back (year 0 is rejected, but a backfill of old usage is
        // not) must not saturate at 2^31 ms or any other width.
        for ms in [1u64 << 31, 1 << 35, 1 << 40, 60_000_000_000_000] {
            let mut h = LagHistogram::default();
            h.record(ms, 3);
            h.record(1, 1);
            let p99 = h.quantile(0.99);
            assert_eq!(h.summary().max_ms, ms);
            assert!(p99 <= ms && p99 >= ms - ms / 16, "{ms}: p99 {p99}");
        }
    }

    #[test]
    fn buckets_are_ordered_and_within_a_sixteenth() {
        let mut last = 0;
        for ms in (0..100_000u64).chain([1 << 40, u64::MAX / 2, u64::MAX]) {
            let b = bucket(ms);
            assert!(b >= last, "{ms}");
            last = b;
            assert!((b as usize) < BUCKETS, "{ms}");
            let up = upper(b);
            assert!(up >= ms, "{ms} above its bucket's bound {up}");
            assert!(
                lower(b) <= ms && (b == 0 || upper(b - 1) < lower(b)),
                "{ms}"
            );
            assert!(up - ms <= ms / 16, "{ms}: bound {up} too far");
        }
    }

    #[test]
    fn percentiles_come_from_the_counts_and_the_maximum_is_exact() {
        let mut h = LagHistogram::default();
        for ms in 1..=1000 {
            h.record(ms, 1);
        }
        let s = h.summary();
        assert_eq!(s.events, 1000);
        assert_eq!(s.max_ms, 1000);
        for (got, want) in [(s.p50_ms, 500), (s.p95_ms, 950), (s.p99_ms, 990)] {
            assert!(got >= want && got - want <= want / 16, "{got} for {want}");
        }
        // A stage of 2 s later on top.
        let later = h.shifted(2000).summary();
        assert_eq!(later.max_ms, 3000);
        assert!(later.p50_ms >= 2500 && later.p50_ms <= 2500 + 2500 / 16);
        let mut two = h.clone();
        two.merge(&h);
        assert_eq!(two.summary().p99_ms, s.p99_ms);
        assert_eq!(two.events(), 2000);
    }
}
