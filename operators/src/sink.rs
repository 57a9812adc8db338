//! Sinks: hand each output table's rows to a [`TableWriter`] (files, ClickHouse, ...).
//!
//! (data, time, diff): consumes rows as they arrive and tells the writer how far the input is
//! complete (its frontier), so writers can commit or flush at epoch boundaries; `None` means the
//! input is complete. Holds no capabilities. A writer error is recorded as fatal for the run —
//! never swallowed — and the driver stops with it.

use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::progress::Antichain;

use crate::{Epoch, Fatal};

/// Receives one table's rows.
pub trait TableWriter<D>: 'static {
    fn write(&mut self, rows: &mut Vec<D>) -> Result<(), String>;
    /// Every row at a time before `frontier` has been written; `None`: no more rows will come.
    fn frontier(&mut self, frontier: Option<Epoch>) -> Result<(), String>;
}

/// A writer that discards rows (for tables a run does not keep).
pub struct Discard;

impl<D> TableWriter<D> for Discard {
    fn write(&mut self, rows: &mut Vec<D>) -> Result<(), String> {
        rows.clear();
        Ok(())
    }
    fn frontier(&mut self, _: Option<Epoch>) -> Result<(), String> {
        Ok(())
    }
}

pub fn sink<'s, D, P>(
    stream: StreamVec<'s, Epoch, D>,
    name: &str,
    pact: P,
    mut writer: Box<dyn TableWriter<D>>,
    fatal: Fatal,
) where
    D: Clone + 'static,
    P: ParallelizationContract<Epoch, Vec<D>>,
{
    let table = name.to_owned();
    let mut last: Option<Antichain<Epoch>> = None;
    stream.sink(pact, name, move |(input, frontier)| {
        input.for_each(|_cap, data| {
            if let Err(e) = writer.write(data) {
                fatal.set(format!("writing {table} failed: {e}"));
            }
        });
        let now = frontier.frontier().to_owned();
        if last.as_ref() != Some(&now) {
            if let Err(e) = writer.frontier(now.as_option().copied()) {
                fatal.set(format!("flushing {table} failed: {e}"));
            }
            last = Some(now);
        }
    });
}
