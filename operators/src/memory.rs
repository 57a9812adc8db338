//! In-memory table writers, for tests and for embedding meterflow in another program.

use std::sync::{Arc, Mutex};

use crate::sink::TableWriter;
use crate::Epoch;

/// Collects every row it is given.
pub struct Collect<D>(pub Arc<Mutex<Vec<D>>>);

impl<D> Collect<D> {
    pub fn new() -> (Self, Arc<Mutex<Vec<D>>>) {
        let rows = Arc::new(Mutex::new(Vec::new()));
        (Collect(rows.clone()), rows)
    }
}

impl<D: 'static> TableWriter<D> for Collect<D> {
    fn write(&mut self, rows: &mut Vec<D>) -> Result<(), String> {
        self.0.lock().expect("collect lock").append(rows);
        Ok(())
    }
    fn frontier(&mut self, _: Option<Epoch>) -> Result<(), String> {
        Ok(())
    }
}
