//! Where output goes: CSV tables ([`files`]), ClickHouse ([`clickhouse`]), alerts to on-call
//! ([`alerts`]) and the catalog change log ([`catalog_log`]). Sinks write what the dataflow
//! emits and record progress; they make no billing decisions. [`outputs`] opens a worker's writer
//! of every output table from the table registry (`meterflow_schemas::tables`).

pub mod alerts;
pub mod catalog_log;
pub mod clickhouse;
pub mod exports;
pub mod files;
pub mod http;
pub mod marketplace;
pub mod metrics;
pub mod outputs;
pub mod quarantine;
pub mod reconciliation;
pub mod revenue;
pub mod scorecard;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use meterflow_schemas::tables::Table;

/// Values of a different type per table, by table: the rows a restore found, the rows a run
/// keeps for its end.
#[derive(Default)]
pub struct ByTable(HashMap<&'static str, Box<dyn Any + Send + Sync>>);

impl ByTable {
    pub fn put<T: Send + Sync + 'static>(&mut self, table: &'static Table, value: T) {
        self.0.insert(table.name, Box::new(value));
    }

    /// Takes `table`'s value (`None` if there is none; panics if it is not a `T`: a wiring
    /// mistake that every run of the table catches).
    pub fn take<T: 'static>(&mut self, table: &'static Table) -> Option<T> {
        let v = self.0.remove(table.name)?;
        Some(
            *v.downcast::<T>().unwrap_or_else(|_| {
                panic!("{} holds no {}", table.name, std::any::type_name::<T>())
            }),
        )
    }

    /// A copy of `table`'s value.
    pub fn get<T: Clone + 'static>(&self, table: &'static Table) -> Option<T> {
        self.peek(table).cloned()
    }

    /// `table`'s value (`None` if there is none; panics if it is not a `T`, as [`ByTable::take`]).
    pub fn peek<T: 'static>(&self, table: &'static Table) -> Option<&T> {
        let v = self.0.get(table.name)?;
        Some(
            v.downcast_ref::<T>().unwrap_or_else(|| {
                panic!("{} holds no {}", table.name, std::any::type_name::<T>())
            }),
        )
    }
}

/// The rows each worker's signed writer holds after its latest flush (for the preview). Workers
/// hold disjoint rows; [`HeldRows::all`] merges them.
pub struct HeldRows<R>(Mutex<BTreeMap<usize, BTreeMap<R, isize>>>);

impl<R> Default for HeldRows<R> {
    fn default() -> Self {
        HeldRows(Mutex::new(BTreeMap::new()))
    }
}

impl<R: Ord + Clone> HeldRows<R> {
    pub fn new() -> Arc<HeldRows<R>> {
        Arc::default()
    }

    /// Replaces what `worker` holds.
    pub fn set<'a>(&self, worker: usize, rows: impl Iterator<Item = (&'a R, isize)>)
    where
        R: 'a,
    {
        let rows = rows.map(|(r, n)| (r.clone(), n)).collect();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker, rows);
    }

    /// What every worker holds.
    pub fn all(&self) -> BTreeMap<R, isize> {
        let by_worker = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = BTreeMap::new();
        for rows in by_worker.values() {
            for (r, n) in rows {
                *all.entry(r.clone()).or_insert(0) += n;
            }
        }
        all.retain(|_, n| *n != 0);
        all
    }
}

/// One worker's share of a [`HeldRows`].
pub struct Kept<R> {
    pub rows: Arc<HeldRows<R>>,
    pub worker: usize,
}

impl<R: Ord + Clone> Kept<R> {
    /// Replaces what this worker holds.
    pub fn set<'a>(&self, rows: impl Iterator<Item = (&'a R, isize)>)
    where
        R: 'a,
    {
        self.rows.set(self.worker, rows);
    }
}
