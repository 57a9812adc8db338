//! meterflow's dataflow operators on timely and differential dataflow. This is the only crate that
//! names timely or differential types; I/O comes in through [`source::ChunkReader`] and goes out
//! through [`sink::TableWriter`].
//!
//! The flow (see `dataflow.rs`): source → decode+validate → dedup (with watermark and lateness) →
//! pre-aggregate → rate join → price → sinks, with accounting counts from every stage.

pub mod accounting;
pub mod aggregate;
pub mod anomalies;
pub mod cluster;
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

    /// Calls `on_stuck` if the run is still going `grace` after it failed: a worker blocked in
    /// an output that retries forever (one table's insert refused for good while another's
    /// waits for a ClickHouse that will not recover, e.g. a full disk) must not keep a failed
    /// process alive and looking healthy. Dropping the watchdog (the run returned) disarms it.
    pub fn watchdog(
        &self,
        grace: std::time::Duration,
        on_stuck: impl FnOnce(&str) + Send + 'static,
    ) -> Watchdog {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (fatal, finished) = (self.clone(), done.clone());
        let poll = std::time::Duration::from_millis(100).min(grace);
        std::thread::Builder::new()
            .name("failure watchdog".into())
            .spawn(move || {
                let failed_at = loop {
                    if finished.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if fatal.is_set() {
                        break std::time::Instant::now();
                    }
                    std::thread::sleep(poll);
                };
                while failed_at.elapsed() < grace {
                    if finished.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(poll);
                }
                on_stuck(&fatal.take().unwrap_or_default());
            })
            .ok();
        Watchdog(done)
    }
}

/// Disarms [`Fatal::watchdog`] when dropped.
pub struct Watchdog(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn armed(fatal: &Fatal) -> (Watchdog, Arc<AtomicBool>) {
        let called = Arc::new(AtomicBool::new(false));
        let c = called.clone();
        let w = fatal.watchdog(Duration::from_millis(200), move |why| {
            assert_eq!(why, "inserts refused");
            c.store(true, Ordering::SeqCst);
        });
        (w, called)
    }

    #[test]
    fn a_failed_run_still_going_after_the_grace_period_is_ended() {
        let fatal = Fatal::default();
        let (_w, called) = armed(&fatal);
        std::thread::sleep(Duration::from_millis(400));
        assert!(!called.load(Ordering::SeqCst), "no failure, no action");
        fatal.set("inserts refused".into());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!called.load(Ordering::SeqCst), "within the grace period");
        std::thread::sleep(Duration::from_millis(500));
        assert!(called.load(Ordering::SeqCst));
    }

    #[test]
    fn a_failed_run_that_returns_in_time_is_left_alone() {
        let fatal = Fatal::default();
        let (w, called) = armed(&fatal);
        fatal.set("inserts refused".into());
        drop(w);
        std::thread::sleep(Duration::from_millis(600));
        assert!(!called.load(Ordering::SeqCst));
    }
}
