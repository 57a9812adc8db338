//! Accounting: every record ends in exactly one place — accepted usage, a rejection with a reason,
//! or a counted duplicate — and the counts prove it: `received == accepted + rejected + duplicates`.
//!
//! Decode and dedup emit [`Counts`] per epoch; they are gathered on worker 0 into one running
//! total that the driver reads for progress, the final report and the invariant check.

use std::sync::{Arc, Mutex};

use meterflow_schemas::rows::Counts;

use crate::sink::TableWriter;
use crate::Epoch;

/// Shared running totals of a run.
#[derive(Clone, Default)]
pub struct Totals {
    inner: Arc<Mutex<(Counts, Option<Epoch>, bool)>>,
}

impl Totals {
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
    fn write(&mut self, rows: &mut Vec<Counts>) -> Result<(), String> {
        let mut g = self.0.inner.lock().expect("totals lock");
        for c in rows.drain(..) {
            g.0.merge(&c);
        }
        Ok(())
    }
    fn frontier(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        let mut g = self.0.inner.lock().expect("totals lock");
        g.1 = frontier;
        g.2 = frontier.is_none();
        Ok(())
    }
}
