//! In-memory table writers, for tests and for embedding meterflow in another program.

use std::sync::{Arc, Mutex};

use crate::signed::{Change, SignedState};
use crate::sink::TableWriter;
use crate::Epoch;

/// Collects every row it is given, with the epoch it came at.
pub struct Collect<D>(pub Arc<Mutex<Vec<(Epoch, D)>>>);

impl<D: 'static> TableWriter<D> for Collect<D> {
    fn write(&mut self, epoch: Epoch, rows: &mut Vec<D>) -> Result<(), String> {
        self.0
            .lock()
            .expect("collect lock")
            .extend(rows.drain(..).map(|r| (epoch, r)));
        Ok(())
    }
    fn flush(&mut self, _: Option<Epoch>) -> Result<(), String> {
        Ok(())
    }
}

/// A signed table kept in memory through [`SignedState`], as a database table would be: records
/// the changes written at each flush.
pub struct SignedCollect<R: Ord + Clone> {
    pub state: SignedState<R>,
    pub written: Arc<Mutex<Vec<Change<R>>>>,
}

impl<R: Ord + Clone> SignedCollect<R> {
    pub fn new(state: SignedState<R>, written: Arc<Mutex<Vec<Change<R>>>>) -> Self {
        SignedCollect { state, written }
    }
}

impl<R: Ord + Clone + 'static> TableWriter<(R, Epoch, isize)> for SignedCollect<R> {
    fn write(&mut self, _: Epoch, rows: &mut Vec<(R, Epoch, isize)>) -> Result<(), String> {
        self.state.extend(rows.drain(..));
        Ok(())
    }
    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        let changes = self.state.changes(frontier);
        self.written.lock().expect("written lock").extend(changes);
        Ok(())
    }
}
