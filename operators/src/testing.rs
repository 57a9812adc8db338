//! Running the whole dataflow in memory: for tests, property tests and examples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::Rounding;
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::rows::{AcceptedEvent, Counts, DuplicateRow, InvoiceLine, RatedRow};
use meterflow_schemas::time::{PeriodUnit, Span};
use meterflow_schemas::validate::ValidationRules;

use crate::accounting::Totals;
use crate::dataflow::{execute, Cluster, Plan, Signed, WorkerIo};
use crate::memory::Collect;
use crate::source::StripedReader;
use crate::watermark::LatenessPolicy;
use crate::Fatal;

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct RunOutput {
    pub accepted: Vec<AcceptedEvent>,
    pub rejections: Vec<Rejection>,
    pub duplicates: Vec<DuplicateRow>,
    pub invoice_lines: Vec<Signed<InvoiceLine>>,
    pub rated_usage: Vec<Signed<RatedRow>>,
    pub counts: Counts,
}

impl RunOutput {
    /// The current invoice lines: signed rows summed, zero-sum rows dropped.
    pub fn current_lines(&self) -> BTreeMap<InvoiceLine, isize> {
        consolidate(self.invoice_lines.iter().map(|(l, _, d)| (l.clone(), *d)))
    }
    pub fn current_rated(&self) -> BTreeMap<RatedRow, isize> {
        consolidate(self.rated_usage.iter().map(|(r, _, d)| (r.clone(), *d)))
    }
}

pub fn consolidate<R: Ord>(rows: impl Iterator<Item = (R, isize)>) -> BTreeMap<R, isize> {
    let mut m = BTreeMap::new();
    for (r, d) in rows {
        *m.entry(r).or_insert(0) += d;
    }
    m.retain(|_, d| *d != 0);
    m
}

fn take<D>(m: &Arc<Mutex<Vec<D>>>) -> Vec<D> {
    std::mem::take(&mut *m.lock().expect("rows"))
}

/// A plan with monthly periods, 1h tolerance and a 7-day dedup horizon.
pub fn plan(catalog: Catalog) -> Plan {
    Plan {
        catalog: Arc::new(catalog),
        rules: Arc::new(ValidationRules::default()),
        policy: LatenessPolicy {
            period: PeriodUnit::Month,
            tolerance: Span::hours(1),
            dedup_horizon: Span::days(7),
        },
        rounding: Rounding::HalfEven,
        max_epochs_ahead: 16,
        epochs_per_round: 1,
    }
}

/// Runs `input` (newline-delimited records) through the dataflow with `workers` threads and
/// chunks of `chunk_bytes`.
pub fn run(
    input: &[u8],
    plan: Plan,
    workers: usize,
    chunk_bytes: u64,
) -> Result<RunOutput, String> {
    let data = Arc::new(input.to_vec());
    let (accepted_w, accepted) = Collect::new();
    let (rejections_w, rejections) = Collect::new();
    let (duplicates_w, duplicates) = Collect::new();
    let (lines_w, lines) = Collect::new();
    let (rated_w, rated) = Collect::new();
    let writers = Arc::new(Mutex::new((
        accepted_w.0,
        rejections_w.0,
        duplicates_w.0,
        lines_w.0,
        rated_w.0,
    )));
    let totals = Totals::default();
    let fatal = Fatal::default();
    let make_io = move |index: usize, peers: usize| {
        let w = writers.lock().expect("writers");
        Ok(WorkerIo {
            reader: Box::new(StripedReader::new(
                vec![(*data).clone()],
                chunk_bytes,
                index,
                peers,
            )),
            usage_events: Box::new(Collect(w.0.clone())),
            rejections: Box::new(Collect(w.1.clone())),
            duplicates: Box::new(Collect(w.2.clone())),
            invoice_lines: Box::new(Collect(w.3.clone())),
            rated_usage: Box::new(Collect(w.4.clone())),
        })
    };
    execute(
        &Cluster::local(workers),
        plan,
        make_io,
        totals.clone(),
        fatal.clone(),
        Duration::from_secs(3600),
        |_| {},
    )?;
    if let Some(e) = fatal.take() {
        return Err(e);
    }
    Ok(RunOutput {
        accepted: take(&accepted),
        rejections: take(&rejections),
        duplicates: take(&duplicates),
        invoice_lines: take(&lines),
        rated_usage: take(&rated),
        counts: totals.snapshot(),
    })
}
