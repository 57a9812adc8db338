//! Progress: which epochs are completely in the sinks, and where the input stood after them.
//!
//! (data, time, diff): on worker 0, consumes the sinks' durable frontiers, the per-epoch
//! [`EpochStats`] (event time and reader positions) and the per-epoch [`Counts`]. When every sink
//! is durable past a pricing-round end `R` (and stats and counts for epochs up to `R` are in), it
//! commits [`Progress`] for `R` to a [`ProgressStore`]: the reader positions, the watermark with
//! each partition's event-time state, and the cumulative counts through `R`. A restart resumes
//! exactly there: later epochs' rows are removed from the sinks, the input is re-read from the
//! positions, and state is rebuilt from the tables. Commits happen only at round ends because
//! invoice lines are priced per round.
//!
//! The store writes on a thread of its own ([`Committer`]), in commit order: worker 0 goes on
//! with the dataflow while a commit record travels to ClickHouse (or waits there while it is
//! down). A record still in flight when the process dies is only a later restart point lost:
//! the restart resumes from the commit before it, as after any kill. The run ends once the
//! last record is written.
//!
//! State: the stats and counts of epochs not yet committed, and the records not yet written.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

use meterflow_schemas::lag::{merge_into, LagHistogram, PartitionLag};
use meterflow_schemas::rows::Counts;
use meterflow_schemas::time::EventTime;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::StreamVec;

use crate::accounting::LagTotals;
use crate::aggregate::round_end;
use crate::decode::{ChunkLag, EpochStats, PartitionTime};
use crate::source::Position;
use crate::watermark::WatermarkTracker;
use crate::{Epoch, Fatal};

/// A committed point of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Every output of epochs up to and including this one is durable.
    pub epoch: Epoch,
    /// The watermark after `epoch` (see [`WatermarkTracker`]).
    pub watermark: Option<EventTime>,
    /// Per Kafka partition, after `epoch`: the latest valid event time read and whether it was
    /// idle. With the watermark, all a resumed run needs to judge lateness as an uninterrupted
    /// run would.
    #[serde(default)]
    pub partitions: Vec<PartitionTime>,
    /// Where each partition's reader stood after `epoch`.
    pub positions: Vec<Position>,
    /// Cumulative counts through `epoch`.
    pub counts: Counts,
    /// The metering lag of the events this commit covers (since the previous commit), per
    /// partition read; `source` holds the input's index (the store names it).
    #[serde(default)]
    pub lag: Vec<PartitionLag>,
}

impl Progress {
    /// The watermark tracker of a run resumed from this commit.
    pub fn watermark_tracker(&self) -> WatermarkTracker {
        WatermarkTracker::resuming(self.watermark, &self.partitions)
    }
}

/// Where progress is recorded (with the data, so both survive together).
pub trait ProgressStore: Send + 'static {
    fn commit(&mut self, progress: &Progress) -> Result<(), String>;
}

/// Records nothing (runs that do not resume).
pub struct NoProgress;

impl ProgressStore for NoProgress {
    fn commit(&mut self, _: &Progress) -> Result<(), String> {
        Ok(())
    }
}

/// The latest pricing-round end before the frontier `complete` (`None`: input complete, so the
/// round holding the last epoch seen).
fn commit_target(
    complete: Option<Epoch>,
    last_seen: Option<Epoch>,
    epochs_per_round: u64,
) -> Option<Epoch> {
    match complete {
        None => last_seen.map(|e| round_end(e, epochs_per_round)),
        Some(0) => None,
        Some(f) => {
            let r = round_end(f - 1, epochs_per_round);
            if r == f - 1 {
                Some(r)
            } else {
                r.checked_sub(epochs_per_round)
            }
        }
    }
}

/// Where commits go: the store that makes them durable, and the run's metering lag totals.
pub struct CommitTo {
    pub store: Box<dyn ProgressStore>,
    pub lag: LagTotals,
}

/// Commits progress on worker 0 (see the module docs). `start` is the progress a resumed run
/// starts from.
pub fn commit_progress<'s>(
    durable: StreamVec<'s, Epoch, ()>,
    stats: StreamVec<'s, Epoch, EpochStats>,
    counts: StreamVec<'s, Epoch, Counts>,
    epochs_per_round: u64,
    start: Option<Progress>,
    to: CommitTo,
    fatal: Fatal,
) {
    let mut committer = Committer::spawn(to, fatal.clone());
    let mut builder = OperatorBuilder::new("CommitProgress".to_owned(), durable.scope());
    let mut durable_in = builder.new_input(durable, Pipeline);
    let mut stats_in = builder.new_input(stats, Pipeline);
    let mut counts_in = builder.new_input(counts, Pipeline);
    builder.build(move |_capabilities| {
        let mut pending: BTreeMap<Epoch, (Vec<Position>, Counts, Vec<ChunkLag>)> = BTreeMap::new();
        // The same watermark the deduplicator computes, so a resumed run continues from it.
        let mut tracker = start
            .as_ref()
            .map_or_else(WatermarkTracker::default, Progress::watermark_tracker);
        let mut committed_through = start.as_ref().map(|p| p.epoch);
        // A resumed run writes from its first epoch even if it reads nothing: a restart under a
        // changed catalog re-rates billed usage there. Its end commits that epoch's round, so
        // the re-rated rows (and the new catalog's digest) are committed, not redone.
        let mut last_seen: Option<Epoch> = start.as_ref().map(|p| p.epoch + 1);
        let mut committed = start.unwrap_or_default();
        committed.counts = std::mem::take(&mut committed.counts).without_gauges();
        let mut positions: BTreeMap<(u32, i32), Position> = committed
            .positions
            .iter()
            .map(|&p| ((p.source, p.partition), p))
            .collect();

        move |frontiers| {
            durable_in.for_each(|_, _| {});
            stats_in.for_each(|_, data| {
                for mut s in data.drain(..) {
                    tracker.observe(&s);
                    let e = pending.entry(s.epoch).or_default();
                    e.0.append(&mut s.positions);
                    e.2.append(&mut s.lag);
                    last_seen = last_seen.max(Some(s.epoch));
                }
            });
            counts_in.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let e = pending.entry(epoch).or_default();
                for c in data.flatten() {
                    e.1.merge(c);
                }
            });
            if fatal.is_set() {
                return;
            }
            // Epochs before `complete` are durable in every sink and fully described here.
            let complete = frontiers
                .iter()
                .map(|f| f.frontier().as_option().copied())
                .reduce(|a, b| match (a, b) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, None) | (None, x) => x,
                });
            let Some(target) = commit_target(complete.flatten(), last_seen, epochs_per_round)
            else {
                return;
            };
            if committed_through.is_some_and(|c| target <= c) {
                return;
            }
            let now = EventTime::now();
            committed.lag.clear();
            while let Some(entry) = pending.first_entry() {
                if *entry.key() > target {
                    break;
                }
                let (ps, c, lags) = entry.remove();
                for p in ps {
                    positions.insert((p.source, p.partition), p);
                }
                committed.counts.merge(&c);
                add_lag(&mut committed.lag, &lags, now);
            }
            committed.epoch = target;
            tracker.watermark_for(target + 1);
            committed.watermark = tracker.floor();
            committed.partitions = tracker.partitions();
            committed.positions = positions.values().copied().collect();
            committer.commit(committed.clone());
            committed_through = Some(target);
        }
    });
}

/// Writes commit records to the store on a thread of its own, in order. Dropping it waits
/// until every record handed to it is written (or the store failed, which is fatal).
struct Committer {
    records: Option<mpsc::Sender<Progress>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    fn spawn(to: CommitTo, fatal: Fatal) -> Committer {
        let CommitTo {
            mut store,
            lag: lag_totals,
        } = to;
        let (records, queue) = mpsc::channel::<Progress>();
        let thread = std::thread::Builder::new()
            .name("commit progress".into())
            .spawn(move || {
                for p in queue {
                    if fatal.is_set() {
                        return;
                    }
                    match store.commit(&p) {
                        // The lag of what this commit covers counts once it is durable.
                        Ok(()) => lag_totals.add(&p.lag, p.watermark),
                        Err(e) => {
                            fatal.set(format!("committing progress failed: {e}"));
                            return;
                        }
                    }
                }
            })
            .expect("a thread for progress commits");
        Committer {
            records: Some(records),
            thread: Some(thread),
        }
    }

    fn commit(&mut self, p: Progress) {
        // A send fails only once the thread stopped on a failed commit, already fatal.
        if let Some(records) = &self.records {
            let _ = records.send(p);
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.records = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds chunks' lags to a commit's: each chunk's events waited from being read until `now`,
/// when the commit covering them is written.
fn add_lag(into: &mut Vec<PartitionLag>, chunks: &[ChunkLag], now: EventTime) {
    let lags: Vec<PartitionLag> = chunks
        .iter()
        .map(|c| {
            let waited = now.0.saturating_sub(c.received.0).max(0) as u64;
            let mut received_to_committed = LagHistogram::default();
            received_to_committed.record(waited, c.event_to_received.events());
            PartitionLag {
                source: c.source.to_string(),
                partition: c.partition,
                event_to_received: c.event_to_received.clone(),
                received_to_committed,
                event_to_committed: c.event_to_received.shifted(waited),
            }
        })
        .collect();
    merge_into(into, &lags);
}

#[cfg(test)]
mod tests {
    use super::commit_target;

    #[test]
    fn commits_land_on_round_ends() {
        // Rounds of 4 epochs end at 3, 7, 11, ...
        assert_eq!(commit_target(Some(0), None, 4), None);
        assert_eq!(commit_target(Some(3), Some(5), 4), None);
        assert_eq!(commit_target(Some(4), Some(5), 4), Some(3));
        assert_eq!(commit_target(Some(7), Some(9), 4), Some(3));
        assert_eq!(commit_target(Some(8), Some(9), 4), Some(7));
        assert_eq!(commit_target(None, Some(9), 4), Some(11));
        assert_eq!(commit_target(None, None, 4), None);
        assert_eq!(commit_target(Some(5), Some(5), 1), Some(4));
    }
}
