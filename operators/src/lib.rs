//! meterflow's dataflow operators on timely and differential dataflow. This is the only crate that
//! names timely or differential types; I/O comes in through [`source::ChunkReader`] and goes out
//! through [`sink::TableWriter`].
//!
//! The flow (see `dataflow.rs`): source → decode+validate → dedup (with watermark and lateness) →
//! pre-aggregate → rate join → price → sinks, with accounting counts from every stage.

pub mod accounting;
pub mod aggregate;
pub mod anomalies;
pub mod dataflow;
pub mod decode;
pub mod dedup;
pub mod dedup_table;
pub mod entitlements;
pub mod invoice;
pub mod memory;
pub mod meters;
pub mod price;
pub mod progress;
pub mod rate_join;
pub mod signed;
pub mod sink;
pub mod source;
#[doc(hidden)]
pub mod testing;
pub mod watermark;

use std::sync::{Arc, Mutex};

/// Logical time: one epoch per input chunk, ordered as the input.
pub type Epoch = u64;

/// The first fatal (infrastructure) error of a run, shared by all workers.
#[derive(Clone, Default)]
pub struct Fatal(Arc<Mutex<Option<String>>>);

impl Fatal {
    pub fn set(&self, message: String) {
        let mut g = self.0.lock().expect("fatal lock");
        if g.is_none() {
            tracing::error!(error = %message, "run failed");
            *g = Some(message);
        }
    }
    pub fn is_set(&self) -> bool {
        self.0.lock().expect("fatal lock").is_some()
    }
    pub fn take(&self) -> Option<String> {
        self.0.lock().expect("fatal lock").clone()
    }
}
