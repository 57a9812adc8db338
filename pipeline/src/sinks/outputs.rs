//! One worker's writers of every output table, opened in one loop over the table registry
//! (`meterflow_schemas::tables`): [`each`] names every output with the Rust type of its rows,
//! and [`Open`] opens a writer for each, for the embedded CSV output or for ClickHouse, as the
//! table's description says (facts or signed, alerting or not).

use std::path::PathBuf;
use std::sync::Arc;

use meterflow_operators::dataflow::Plan;
use meterflow_operators::signed::{share, Horizon, Signed, SignedState};
use meterflow_operators::sink::{TableWriter, Writers};
use meterflow_operators::Epoch;
use meterflow_schemas::anomaly::{Anomaly, BucketRow, Detector};
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::rows::{
    AcceptedEvent, ByCustomer, DuplicateRow, EntitlementSignal, InvoiceLine, LineUsage, RatedRow,
};
use meterflow_schemas::tables::{self, Shape, Table};
use meterflow_schemas::time::EventTime;

use crate::sinks::alerts::{AlertTables, Writer};
use crate::sinks::clickhouse::client::{ClickHouse, ClickHouseConfig};
use crate::sinks::clickhouse::derived::{ChSigned, SignedTable};
use crate::sinks::clickhouse::sink::{ChFact, ChNames, FactsWriter};
use crate::sinks::files::{CsvRow, Names, RowsWriter, SignedWriter};
use crate::sinks::{ByTable, HeldRows, Kept};

/// Rows of a fact table (`Shape::Facts`), for every sink.
pub trait FactRow: CsvRow + ChFact {}

impl<R: CsvRow + ChFact> FactRow for R {}

/// Rows of a signed table (`Shape::Signed`), for every sink, written by the worker that owns
/// their customer.
pub trait SignedRow: CsvRow + ChSigned + ByCustomer + Send + Sync {
    /// How long a held row can still change, so the writer can forget it afterwards (`None`:
    /// rows are held for the whole run).
    fn horizon(_plan: &Plan) -> Option<Horizon<Self>> {
        None
    }
    /// Wraps the table's writer so rows also go out as alerts (for tables registered with
    /// `alerts`).
    fn alerting(
        _writer: Writer<Self>,
        _held: Vec<(Self, isize, u64)>,
        _alerts: &AlertTables,
    ) -> Result<Writer<Self>, String> {
        Err(format!(
            "{} rows cannot be sent as alerts",
            std::any::type_name::<Self>()
        ))
    }
}

impl SignedRow for InvoiceLine {}
impl SignedRow for RatedRow {}
impl SignedRow for LineUsage {}

/// Rows that are alerts too.
macro_rules! alert_rows {
    ($($row:ty),*) => {$(
        impl SignedRow for $row {
            fn alerting(
                writer: Writer<Self>,
                held: Vec<(Self, isize, u64)>,
                alerts: &AlertTables,
            ) -> Result<Writer<Self>, String> {
                alerts.wrap(writer, held)
            }
        }
    )*};
}

alert_rows!(EntitlementSignal, Anomaly);

impl SignedRow for BucketRow {
    /// How long a bucket row can change: as far as the anomaly detectors hold buckets behind
    /// the watermark, plus the dedup horizon again for the newest bucket running ahead of the
    /// watermark (tolerance, partitions that lag). The writers forget rows older than that, so
    /// their state stays bounded on an unbounded stream.
    fn horizon(plan: &Plan) -> Option<Horizon<Self>> {
        let w = EventTime(1_800_000_000_000);
        let dedup = plan.policy.dedup_horizon;
        let (from, _) = Detector::new(plan.anomalies.clone(), dedup, &plan.catalog).held_from(w);
        let span = (w.0 - from.0) + dedup.millis();
        Some(Horizon::new(|b: &BucketRow| b.start.0, span))
    }
}

/// Something done once per output table, knowing the type of its rows.
pub trait Visit {
    fn facts<R: FactRow>(&mut self, table: &'static Table) -> Result<(), String>;
    fn signed<R: SignedRow>(&mut self, table: &'static Table) -> Result<(), String>;
}

/// Visits every output table of the registry with the type of its rows: the one place a table
/// meets its row type.
pub fn each(v: &mut impl Visit) -> Result<(), String> {
    v.facts::<AcceptedEvent>(&tables::USAGE_EVENTS)?;
    v.facts::<Rejection>(&tables::REJECTIONS)?;
    v.facts::<DuplicateRow>(&tables::DUPLICATES)?;
    v.signed::<InvoiceLine>(&tables::INVOICE_LINES)?;
    v.signed::<RatedRow>(&tables::RATED_USAGE)?;
    v.signed::<LineUsage>(&tables::LINE_USAGE)?;
    v.signed::<InvoiceLine>(&tables::SHADOW_INVOICE_LINES)?;
    v.signed::<EntitlementSignal>(&tables::ENTITLEMENT_SIGNALS)?;
    v.signed::<BucketRow>(&tables::USAGE_BUCKETS)?;
    v.signed::<Anomaly>(&tables::ANOMALIES)?;
    Ok(())
}

/// Worker `index` of `peers`'s share of the rows the signed tables held at the last commit: the
/// rows of the customers it owns, which the dataflow routes to it (see `Written::ByCustomer`).
pub fn share_of(restored: &ByTable, index: usize, peers: usize) -> ByTable {
    struct Share<'a> {
        restored: &'a ByTable,
        index: usize,
        peers: usize,
        mine: ByTable,
    }
    impl Visit for Share<'_> {
        fn facts<R: FactRow>(&mut self, _: &'static Table) -> Result<(), String> {
            Ok(())
        }
        fn signed<R: SignedRow>(&mut self, table: &'static Table) -> Result<(), String> {
            if let Some(rows) = self.restored.peek::<Vec<(R, isize, u64)>>(table) {
                self.mine.put(table, share(rows, self.index, self.peers));
            }
            Ok(())
        }
    }
    let mut s = Share {
        restored,
        index,
        peers,
        mine: ByTable::default(),
    };
    each(&mut s).expect("sharing held rows cannot fail");
    s.mine
}

/// Where a run's tables go.
pub enum Target {
    /// CSV files under this directory.
    Files { out: PathBuf, names: Arc<Names> },
    /// ClickHouse, each table inserting on a connection of its own.
    ClickHouse {
        cfg: ClickHouseConfig,
        names: Arc<ChNames>,
    },
}

/// Opens one worker's writers of every output table.
pub struct Open<'a> {
    pub worker: usize,
    pub target: &'a Target,
    pub plan: &'a Plan,
    /// The first pricing round this run writes (restored rows are held as of before it).
    pub first_round: Epoch,
    /// This worker's share of the rows the signed tables held at the last commit
    /// ([`share_of`]).
    pub restored: ByTable,
    /// Tables whose held rows the run reads when it ends: a `HeldRows` each.
    pub kept: &'a ByTable,
    pub alerts: &'a AlertTables<'a>,
    pub writers: Writers,
}

impl Open<'_> {
    /// The writers of every output table.
    pub fn all(mut self) -> Result<Writers, String> {
        each(&mut self)?;
        Ok(self.writers)
    }
}

impl Visit for Open<'_> {
    fn facts<R: FactRow>(&mut self, table: &'static Table) -> Result<(), String> {
        let w: Box<dyn TableWriter<R>> = match self.target {
            Target::Files { out, names } => Box::new(RowsWriter::<R>::create(
                out,
                table,
                self.worker,
                names.clone(),
            )?),
            Target::ClickHouse { cfg, names } => Box::new(FactsWriter::<R>::open(
                ClickHouse::connect(cfg)?,
                names.clone(),
                table,
            )),
        };
        self.writers.insert(table, w);
        Ok(())
    }

    fn signed<R: SignedRow>(&mut self, table: &'static Table) -> Result<(), String> {
        debug_assert_eq!(table.output().shape, Shape::Signed);
        let held: Vec<(R, isize, u64)> = self.restored.take(table).unwrap_or_default();
        let alerts = table.output().alerts;
        // An alerting writer knows which alerts are open from the same rows.
        let open_alerts = if alerts { held.clone() } else { Vec::new() };
        let mut state = SignedState::resumed(held, self.first_round);
        if let Some(h) = R::horizon(self.plan) {
            state = state.forgetting(h);
        }
        let kept = self.kept.get::<Arc<HeldRows<R>>>(table).map(|rows| Kept {
            rows,
            worker: self.worker,
        });
        let mut w: Box<dyn TableWriter<Signed<R>>> = match self.target {
            Target::Files { out, names } => Box::new(SignedWriter::create(
                out,
                table,
                self.worker,
                names.clone(),
                state,
                kept,
            )?),
            Target::ClickHouse { cfg, names } => Box::new(SignedTable::open(
                ClickHouse::connect(cfg)?,
                names.clone(),
                table,
                state,
                kept,
            )),
        };
        if alerts {
            w = R::alerting(w, open_alerts, self.alerts)?;
        }
        self.writers.insert(table, w);
        Ok(())
    }
}

/// Keeps the rows `table` holds at the end of the run, merged over the workers.
pub fn keep<R>(kept: &mut ByTable, table: &'static Table) -> Arc<HeldRows<R>>
where
    R: Ord + Clone + Send + Sync + 'static,
{
    let rows = HeldRows::new();
    kept.put(table, rows.clone());
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what [`each`] visits.
    #[derive(Default)]
    struct Seen(Vec<(&'static str, Shape, &'static str)>);

    impl Visit for Seen {
        fn facts<R: FactRow>(&mut self, table: &'static Table) -> Result<(), String> {
            self.0
                .push((table.name, Shape::Facts, std::any::type_name::<R>()));
            Ok(())
        }
        fn signed<R: SignedRow>(&mut self, table: &'static Table) -> Result<(), String> {
            self.0
                .push((table.name, Shape::Signed, std::any::type_name::<R>()));
            Ok(())
        }
    }

    #[test]
    fn every_registered_output_is_opened_once_with_its_rows_and_shape() {
        let mut seen = Seen::default();
        each(&mut seen).unwrap();
        let registered: Vec<&Table> = tables::outputs().collect();
        assert_eq!(seen.0.len(), registered.len());
        for ((name, shape, row), t) in seen.0.iter().zip(registered) {
            assert_eq!(*name, t.name);
            assert_eq!(*shape, t.output().shape, "{name}");
            assert!(
                row.ends_with(&format!("::{}", t.row)),
                "{name}: registered with {} rows, opened with {row}",
                t.row
            );
        }
    }
}
