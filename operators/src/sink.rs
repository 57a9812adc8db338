//! Sinks: hand each output table's rows to a [`TableWriter`] (files, ClickHouse, ...), and report
//! how far the table is durable.
//!
//! (data, time, diff): consumes rows as they arrive. Once the input frontier has passed some
//! epochs and the [`FlushPolicy`] says so (enough rows, enough time, a pricing round complete, or
//! the input is complete), it asks the writer to make everything durable, then downgrades its
//! output capability to that frontier. The output carries no data: its frontier *is* the table's
//! durable frontier, which the progress committer waits for before recording input offsets. So
//! progress never runs ahead of the data. Holds one capability: the first epoch not yet durable.
//!
//! A writer may flush in the background ([`TableWriter::start_flush`]): the worker goes on
//! buffering rows while the flush runs, one flush per table at a time, and the capability moves
//! only when it has finished. A writer that cannot make progress (a database down) retries with
//! backoff; its frontier stops, and the sources stop once what they read since holds
//! `max_unwritten_bytes`, so memory stays bounded. A writer error it
//! cannot retry is recorded as fatal for the run and the capability is kept: nothing downstream
//! is told the data is complete.

use std::any::Any;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use meterflow_schemas::tables::Table;

use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::StreamVec;

use crate::aggregate::round_end;
use crate::{Epoch, Fatal};

/// Receives one table's rows.
pub trait TableWriter<D>: 'static {
    /// Buffers or writes rows of `epoch` (draining `rows`); they need not be durable yet.
    fn write(&mut self, epoch: Epoch, rows: &mut Vec<D>) -> Result<(), String>;
    /// Makes every row written so far durable. Input before `frontier` is complete (`None`:
    /// all input is complete).
    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String>;
    /// Starts making every row written so far durable without waiting for it, as `flush` would
    /// (`Ok(false)`: nothing to start, or this writer cannot; `flush` is called instead).
    fn start_flush(&mut self, frontier: Option<Epoch>) -> Result<bool, String> {
        let _ = frontier;
        Ok(false)
    }
    /// Whether the flush last started has finished (rows written meanwhile are not part of it).
    fn flush_done(&mut self) -> Result<bool, String> {
        Ok(true)
    }
}

/// When a sink flushes.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    /// Flush once this many rows are waiting.
    pub max_rows: usize,
    /// Flush completed epochs at least this often.
    pub max_delay: Duration,
    /// Flush as soon as a pricing round of this many epochs is complete (every row of its
    /// epochs is in), `min_delay` after the last flush at the earliest: the round, not a timer
    /// of its own, sets when rows become durable. 0: `max_delay` alone.
    pub epochs_per_round: u64,
    /// The least time between two flushes started by a completed round (bounds the inserts per
    /// table and second while a backlog completes rounds quickly).
    pub min_delay: Duration,
}

impl FlushPolicy {
    pub fn every(max_delay: Duration) -> FlushPolicy {
        FlushPolicy {
            max_rows: usize::MAX,
            max_delay,
            epochs_per_round: 0,
            min_delay: max_delay,
        }
    }

    /// The same, also flushing as each pricing round of `epochs_per_round` epochs completes.
    pub fn with_rounds(self, epochs_per_round: u64) -> FlushPolicy {
        FlushPolicy {
            epochs_per_round,
            ..self
        }
    }

    /// Whether the round holding `first` (the first epoch not yet durable) is complete at
    /// `frontier`.
    fn round_complete(&self, first: Epoch, frontier: Epoch) -> bool {
        self.epochs_per_round > 0 && frontier > round_end(first, self.epochs_per_round)
    }
}

/// A writer that discards rows (for tables a run does not keep).
pub struct Discard;

impl<D> TableWriter<D> for Discard {
    fn write(&mut self, _: Epoch, rows: &mut Vec<D>) -> Result<(), String> {
        rows.clear();
        Ok(())
    }
    fn flush(&mut self, _: Option<Epoch>) -> Result<(), String> {
        Ok(())
    }
}

/// One worker's writers, by table: `run` opens one per registered output, the dataflow takes
/// each as it builds the table's sink. A table without a writer is discarded.
#[derive(Default)]
pub struct Writers(HashMap<&'static str, Box<dyn Any>>);

impl Writers {
    /// Sets the writer of `table` (replacing any).
    pub fn insert<D: 'static>(&mut self, table: &'static Table, writer: Box<dyn TableWriter<D>>) {
        self.0.insert(table.name, Box::new(writer));
    }

    /// Takes the writer of `table`, or a [`Discard`] if there is none.
    ///
    /// Panics if the writer was opened for other rows than the dataflow produces: a wiring
    /// mistake that every run of the table catches at once.
    pub fn take<D: 'static>(&mut self, table: &'static Table) -> Box<dyn TableWriter<D>> {
        match self.0.remove(table.name) {
            None => Box::new(Discard),
            Some(w) => *w.downcast::<Box<dyn TableWriter<D>>>().unwrap_or_else(|_| {
                panic!(
                    "the writer of {} does not take {} rows",
                    table.name,
                    std::any::type_name::<D>()
                )
            }),
        }
    }

    /// The tables that have a writer.
    pub fn tables(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }
}

/// How often a sink looks whether a background flush has finished.
const POLL: Duration = Duration::from_millis(2);

/// Sinks `stream` into `writer`; returns the table's durable-frontier stream.
pub fn sink<'s, D, P>(
    stream: StreamVec<'s, Epoch, D>,
    name: &str,
    pact: P,
    mut writer: Box<dyn TableWriter<D>>,
    policy: FlushPolicy,
    fatal: Fatal,
) -> StreamVec<'s, Epoch, ()>
where
    D: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<D>>,
{
    let table = name.to_owned();
    let mut builder = OperatorBuilder::new(format!("Sink {name}"), stream.scope());
    let activator = stream
        .scope()
        .activator_for(builder.operator_info().address);
    let mut input = builder.new_input(stream, pact);
    let (_output, durable) = builder.new_output::<Vec<()>>();
    builder.build(move |mut capabilities| {
        let mut cap = capabilities.pop();
        let mut waiting = 0usize;
        let mut last_flush = Instant::now();
        // The frontier of a flush that runs in the background.
        let mut in_flight: Option<Option<Epoch>> = None;
        move |frontiers| {
            input.for_each_stamp(|stamp, data| {
                let Some(&epoch) = stamp.least() else { return };
                for batch in data {
                    waiting += batch.len();
                    if let Err(e) = writer.write(epoch, batch) {
                        fatal.set(format!("writing {table} failed: {e}"));
                    }
                }
            });
            if fatal.is_set() {
                return;
            }
            if let Some(target) = in_flight {
                match writer.flush_done() {
                    Ok(true) => {
                        in_flight = None;
                        match (target, cap.as_mut()) {
                            (Some(f), Some(c)) => c.downgrade(&f),
                            (None, _) => cap = None,
                            (Some(_), None) => {}
                        }
                    }
                    Ok(false) => {
                        activator.activate_after(POLL);
                        return;
                    }
                    Err(e) => {
                        fatal.set(format!("flushing {table} failed: {e}"));
                        return;
                    }
                }
            }
            let frontier = frontiers[0].frontier().as_option().copied();
            let Some(c) = cap.as_mut() else { return };
            let advanced = frontier.is_none_or(|f| f > *c.time());
            if !advanced {
                return;
            }
            let elapsed = last_flush.elapsed();
            let round = frontier.is_some_and(|f| policy.round_complete(*c.time(), f));
            let due = frontier.is_none()
                || waiting == 0
                || waiting >= policy.max_rows
                || elapsed >= policy.max_delay
                || (round && elapsed >= policy.min_delay);
            if !due {
                let wait = if round {
                    policy.min_delay.min(policy.max_delay)
                } else {
                    policy.max_delay
                };
                activator.activate_after(wait.saturating_sub(elapsed));
                return;
            }
            match writer.start_flush(frontier) {
                Ok(true) => {
                    waiting = 0;
                    last_flush = Instant::now();
                    in_flight = Some(frontier);
                    activator.activate_after(POLL);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    fatal.set(format!("flushing {table} failed: {e}"));
                    return;
                }
            }
            match writer.flush(frontier) {
                Ok(()) => {
                    waiting = 0;
                    last_flush = Instant::now();
                    match frontier {
                        Some(f) => c.downgrade(&f),
                        None => cap = None,
                    }
                }
                Err(e) => fatal.set(format!("flushing {table} failed: {e}")),
            }
        }
    });
    durable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_complete_once_the_frontier_passes_its_last_epoch() {
        let p = FlushPolicy::every(Duration::from_secs(1)).with_rounds(2);
        // Rounds of two epochs: 0-1, 2-3, 4-5.
        assert!(!p.round_complete(2, 3), "epoch 3 may still bring rows");
        assert!(p.round_complete(2, 4));
        assert!(p.round_complete(3, 4));
        assert!(p.round_complete(0, 9));
        let timer_only = FlushPolicy::every(Duration::from_secs(1));
        assert!(!timer_only.round_complete(2, 9));
    }
}
