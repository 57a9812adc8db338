//! Accounting: every record ends in exactly one place — accepted usage, a rejection with a reason,
//! or a counted duplicate — and the counts prove it: `received == accepted + rejected + duplicates`.
//!
//! Decode and dedup emit [`Counts`] per epoch; they are gathered on worker 0 into one running
//! total that the driver reads for progress, the final report and the invariant check.

use std::sync::{Arc, Mutex};

use meterflow_schemas::lag::{merge_into, PartitionLag};
use meterflow_schemas::rows::Counts;
use meterflow_schemas::time::EventTime;

use crate::sink::TableWriter;
use crate::Epoch;

/// Shared running totals of a run.
#[derive(Clone, Default)]
pub struct Totals {
    inner: Arc<Mutex<(Counts, Option<Epoch>, bool)>>,
    pub clock: LatencyClock,
    pub lag: LagTotals,
}

/// The metering lag of everything this run committed, per partition read (sources by input
/// index), and the watermark of the last commit.
#[derive(Clone, Default)]
pub struct LagTotals {
    inner: Arc<Mutex<(Vec<PartitionLag>, Option<EventTime>)>>,
}

impl LagTotals {
    pub fn add(&self, lag: &[PartitionLag], watermark: Option<EventTime>) {
        let mut g = self.inner.lock().expect("lag lock");
        merge_into(&mut g.0, lag);
        g.1 = watermark.or(g.1);
    }

    pub fn snapshot(&self) -> (Vec<PartitionLag>, Option<EventTime>) {
        self.inner.lock().expect("lag lock").clone()
    }
}

impl Totals {
    /// Starts from the counts of an earlier run (a resumed run).
    pub fn seed(&self, counts: Counts) {
        self.inner.lock().expect("totals lock").0 = counts.without_gauges();
    }

    pub fn snapshot(&self) -> Counts {
        self.inner.lock().expect("totals lock").0.clone()
    }
    /// The first epoch not yet fully counted (`None` once everything is).
    pub fn frontier(&self) -> Option<Epoch> {
        self.inner.lock().expect("totals lock").1
    }
    pub fn complete(&self) -> bool {
        self.inner.lock().expect("totals lock").2
    }
}

/// Merges counts into [`Totals`].
pub struct TotalsWriter(pub Totals);

impl TableWriter<Counts> for TotalsWriter {
    fn write(&mut self, _: Epoch, rows: &mut Vec<Counts>) -> Result<(), String> {
        let mut g = self.0.inner.lock().expect("totals lock");
        for c in rows.drain(..) {
            g.0.merge(&c);
        }
        Ok(())
    }
    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        let mut g = self.0.inner.lock().expect("totals lock");
        g.1 = frontier;
        g.2 = frontier.is_none();
        Ok(())
    }
}

/// When each epoch was read and when the whole dataflow finished it: epoch latency, the time from
/// reading a chunk to every output derived from it being durable (flushed by its sink, so it
/// includes the sinks' flush interval).
#[derive(Clone, Default)]
pub struct LatencyClock {
    inner: Arc<Mutex<ClockState>>,
}

#[derive(Default)]
struct ClockState {
    started: std::collections::BTreeMap<Epoch, std::time::Instant>,
    micros: Vec<u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub epochs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyClock {
    pub fn start(&self, epoch: Epoch) {
        self.inner
            .lock()
            .expect("clock lock")
            .started
            .insert(epoch, std::time::Instant::now());
    }

    /// Every epoch before `frontier` (all, if `None`) is complete now.
    pub fn complete_before(&self, frontier: Option<Epoch>) {
        let mut g = self.inner.lock().expect("clock lock");
        let now = std::time::Instant::now();
        while let Some((&e, &t)) = g.started.first_key_value() {
            if frontier.is_some_and(|f| e >= f) {
                break;
            }
            g.started.pop_first();
            g.micros.push(now.duration_since(t).as_micros() as u64);
        }
    }

    /// Epochs started and not yet complete.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().expect("clock lock").started.len()
    }

    pub fn latency(&self) -> Latency {
        let mut v = self.inner.lock().expect("clock lock").micros.clone();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Latency {
            epochs: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}
