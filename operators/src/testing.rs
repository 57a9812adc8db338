//! Running the whole dataflow in memory: for tests, property tests and examples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterflow_schemas::anomaly::{Anomaly, BucketRow};
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::money::Rounding;
use meterflow_schemas::rejection::Rejection;
use meterflow_schemas::rows::{
    AcceptedEvent, Counts, DuplicateRow, EntitlementSignal, InvoiceLine, LineUsage, RatedRow,
};
use meterflow_schemas::tables;
use meterflow_schemas::time::{PeriodUnit, Span};
use meterflow_schemas::validate::ValidationRules;

use crate::accounting::Totals;
use crate::dataflow::{execute, Cluster, Execution, Plan, Resume, WorkerIo};
use crate::memory::{Collect, SignedCollect};
use crate::progress::{Progress, ProgressStore};
use crate::signed::Signed;
use crate::signed::SignedState;
use crate::sink::{FlushPolicy, TableWriter, Writers};
use crate::source::{
    Chunk, ChunkReader, MessageSpan, PartitionState, Position, Read, StripedReader,
};
use crate::watermark::LatenessPolicy;
use crate::{Epoch, Fatal};

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct RunOutput {
    /// Accepted events with the epoch that accepted them.
    pub accepted: Vec<(Epoch, AcceptedEvent)>,
    pub rejections: Vec<Rejection>,
    pub duplicates: Vec<DuplicateRow>,
    pub invoice_lines: Vec<Signed<InvoiceLine>>,
    pub rated_usage: Vec<Signed<RatedRow>>,
    pub line_usage: Vec<Signed<LineUsage>>,
    pub entitlement_signals: Vec<Signed<EntitlementSignal>>,
    pub usage_buckets: Vec<Signed<BucketRow>>,
    pub anomalies: Vec<Signed<Anomaly>>,
    pub shadow_invoice_lines: Vec<Signed<InvoiceLine>>,
    pub progress: Vec<Progress>,
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
        max_unwritten_bytes: 256 << 20,
        epochs_per_round: 1,
        anomalies: meterflow_schemas::anomaly::AnomalyRules::default(),
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
    run_with(
        input,
        plan,
        workers,
        chunk_bytes,
        Resume::default(),
        |_, _, _| {},
    )
}

/// Runs Kafka-like input through the dataflow on one worker: `partitions[p]` is partition `p`'s
/// log (one record per message), and `schedule[e][p]` is how many of its next messages epoch
/// `e` reads (what is left is read in one last epoch). A partition is idle once read to its end.
pub fn run_messages(
    partitions: Vec<Vec<String>>,
    schedule: Vec<Vec<usize>>,
    plan: Plan,
) -> Result<RunOutput, String> {
    let logs = Arc::new(partitions);
    let schedule = Arc::new(schedule);
    run_with(b"", plan, 1, 1 << 20, Resume::default(), move |io, _, _| {
        io.reader = Box::new(ScheduledReader {
            logs: logs.clone(),
            schedule: schedule.clone(),
            next: vec![0; logs.len()],
            epoch: 0,
        });
    })
}

/// The reader of [`run_messages`].
struct ScheduledReader {
    logs: Arc<Vec<Vec<String>>>,
    schedule: Arc<Vec<Vec<usize>>>,
    next: Vec<usize>,
    epoch: Epoch,
}

impl ChunkReader for ScheduledReader {
    fn peek_epoch(&mut self) -> Option<Epoch> {
        let left = self
            .next
            .iter()
            .zip(self.logs.iter())
            .any(|(n, l)| *n < l.len());
        left.then_some(self.epoch)
    }

    fn next_chunk(&mut self, mut bytes: Vec<u8>) -> Read {
        if self.peek_epoch().is_none() {
            return Read::Done;
        }
        bytes.clear();
        let mut messages = Vec::new();
        let take = self.schedule.get(self.epoch as usize);
        for (p, log) in self.logs.iter().enumerate() {
            let n = take.map_or(usize::MAX, |t| t.get(p).copied().unwrap_or(0));
            let end = self.next[p].saturating_add(n).min(log.len());
            for (offset, message) in log.iter().enumerate().take(end).skip(self.next[p]) {
                messages.push(MessageSpan {
                    start: bytes.len() as u32,
                    len: message.len() as u32,
                    source: 0,
                    partition: p as i32,
                    offset: offset as u64,
                    meta_start: 0,
                    key_len: 0,
                    headers_len: 0,
                });
                bytes.extend_from_slice(message.as_bytes());
            }
            self.next[p] = end;
        }
        let chunk = Chunk {
            epoch: self.epoch,
            source: 0,
            base_offset: 0,
            bytes,
            messages,
            meta: Vec::new(),
            positions: (0..self.logs.len())
                .map(|p| Position {
                    source: 0,
                    partition: p as i32,
                    next_offset: self.next[p] as u64,
                    check: 0,
                })
                .collect(),
            partitions: (0..self.logs.len())
                .map(|p| PartitionState {
                    source: 0,
                    partition: p as i32,
                    idle: self.next[p] == self.logs[p].len(),
                })
                .collect(),
        };
        self.epoch += 1;
        Read::Chunk(chunk)
    }
}

/// A writer that keeps every row it is given.
fn collect<D: 'static>(rows: &Arc<Mutex<Vec<(Epoch, D)>>>) -> Box<dyn TableWriter<D>> {
    Box::new(Collect(rows.clone()))
}

/// A signed writer of worker `(index, peers)` resuming from its share of `held`, keeping the
/// changes it writes.
fn signed_collect<R: Ord + Clone + Send + meterflow_schemas::rows::ByCustomer + 'static>(
    held: &[(R, isize, u64)],
    (index, peers): (usize, usize),
    first_round: Epoch,
    written: &Arc<Mutex<Vec<crate::signed::Change<R>>>>,
) -> Box<dyn TableWriter<Signed<R>>> {
    let state = SignedState::resumed(crate::signed::share(held, index, peers), first_round);
    Box::new(SignedCollect::new(state, written.clone()))
}

fn changes<R>(c: &Arc<Mutex<Vec<crate::signed::Change<R>>>>) -> Vec<Signed<R>> {
    std::mem::take(&mut *c.lock().expect("written"))
        .into_iter()
        .map(|c| (c.row, c.version, c.sign as isize))
        .collect()
}

/// Rows a derived table already holds when a run resumes: (row, multiplicity, version).
#[derive(Clone, Debug, Default)]
pub struct Held {
    pub invoice_lines: Vec<(InvoiceLine, isize, u64)>,
    pub rated_usage: Vec<(RatedRow, isize, u64)>,
    pub line_usage: Vec<(LineUsage, isize, u64)>,
    pub usage_buckets: Vec<(BucketRow, isize, u64)>,
    pub anomalies: Vec<(Anomaly, isize, u64)>,
}

/// As [`run`], but resuming from `resume` (epochs up to its progress are skipped), with derived
/// tables that hold `held` and write only changes, as a database sink does. The derived rows of
/// the output are the changes written: `(row, version, sign)`.
pub fn run_resumed(
    input: &[u8],
    plan: Plan,
    workers: usize,
    chunk_bytes: u64,
    resume: Resume,
    held: Held,
) -> Result<RunOutput, String> {
    let first_round = crate::aggregate::round_end(resume.first_epoch(), plan.epochs_per_round);
    let written = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let out = written.clone();
    let out_run = run_with(
        input,
        plan,
        workers,
        chunk_bytes,
        resume,
        move |io: &mut WorkerIo, index, peers| {
            // Each worker writes, and so holds, the rows of the customers it owns.
            let (w, written) = (&mut io.writers, &out);
            w.insert(
                &tables::INVOICE_LINES,
                signed_collect(&held.invoice_lines, (index, peers), first_round, &written.0),
            );
            w.insert(
                &tables::RATED_USAGE,
                signed_collect(&held.rated_usage, (index, peers), first_round, &written.1),
            );
            w.insert(
                &tables::LINE_USAGE,
                signed_collect(&held.line_usage, (index, peers), first_round, &written.2),
            );
            w.insert(
                &tables::USAGE_BUCKETS,
                signed_collect(&held.usage_buckets, (index, peers), first_round, &written.3),
            );
            w.insert(
                &tables::ANOMALIES,
                signed_collect(&held.anomalies, (index, peers), first_round, &written.4),
            );
        },
    )?;
    let out = out_run;
    Ok(RunOutput {
        invoice_lines: changes(&written.0),
        rated_usage: changes(&written.1),
        line_usage: changes(&written.2),
        usage_buckets: changes(&written.3),
        anomalies: changes(&written.4),
        ..out
    })
}

fn run_with(
    input: &[u8],
    plan: Plan,
    workers: usize,
    chunk_bytes: u64,
    resume: Resume,
    adapt: impl Fn(&mut WorkerIo, usize, usize) + Send + Sync + 'static,
) -> Result<RunOutput, String> {
    let data = Arc::new(input.to_vec());
    let out = Outputs::default();
    let totals = Totals::default();
    if let Some(p) = &resume.progress {
        totals.seed(p.counts.clone());
    }
    let fatal = Fatal::default();
    // A resumed run reads on from where the commit says the input stopped.
    let (starts, committed) = match &resume.progress {
        Some(p) => (
            crate::source::resume_starts(&[(*data).clone()], &[], &p.positions)?,
            Some(p.epoch),
        ),
        None => (vec![0], None),
    };
    let writers = out.clone();
    let make_io = move |index: usize, peers: usize, _generation: u32| {
        let reader = StripedReader::resuming(
            vec![(*data).clone()],
            starts.clone(),
            committed,
            chunk_bytes,
            (index, peers),
        );
        let mut w = Writers::default();
        w.insert(&tables::USAGE_EVENTS, collect(&writers.accepted));
        w.insert(&tables::REJECTIONS, collect(&writers.rejections));
        w.insert(&tables::DUPLICATES, collect(&writers.duplicates));
        w.insert(&tables::INVOICE_LINES, collect(&writers.invoice_lines));
        w.insert(&tables::RATED_USAGE, collect(&writers.rated_usage));
        w.insert(&tables::LINE_USAGE, collect(&writers.line_usage));
        w.insert(
            &tables::ENTITLEMENT_SIGNALS,
            collect(&writers.entitlement_signals),
        );
        w.insert(
            &tables::SHADOW_INVOICE_LINES,
            collect(&writers.shadow_invoice_lines),
        );
        w.insert(&tables::USAGE_BUCKETS, collect(&writers.usage_buckets));
        w.insert(&tables::ANOMALIES, collect(&writers.anomalies));
        let mut io = WorkerIo {
            reader: Box::new(reader),
            writers: w,
            progress: Box::new(Commits(writers.progress.clone())),
            facts_flush: FlushPolicy::every(Duration::ZERO),
            derived_flush: FlushPolicy::every(Duration::ZERO),
            report: None,
        };
        adapt(&mut io, index, peers);
        Ok(io)
    };
    let run = Execution {
        plan,
        resume: Arc::new(resume),
        totals: totals.clone(),
        fatal: fatal.clone(),
        catalog_digest: String::new(),
        inputs: String::new(),
        generation: 1,
        stop: Arc::default(),
        shutdown: Arc::default(),
    };
    execute(
        &Cluster::local(workers),
        run,
        make_io,
        Duration::from_secs(3600),
        |_| {},
    )?;
    if let Some(e) = fatal.take() {
        return Err(e);
    }
    let rows = |r: &Rows<_>| take(r).into_iter().map(|(_, row)| row).collect();
    Ok(RunOutput {
        accepted: take(&out.accepted),
        rejections: take(&out.rejections).into_iter().map(|(_, r)| r).collect(),
        duplicates: take(&out.duplicates).into_iter().map(|(_, r)| r).collect(),
        invoice_lines: rows(&out.invoice_lines),
        rated_usage: take(&out.rated_usage).into_iter().map(|(_, r)| r).collect(),
        line_usage: take(&out.line_usage).into_iter().map(|(_, r)| r).collect(),
        shadow_invoice_lines: rows(&out.shadow_invoice_lines),
        entitlement_signals: take(&out.entitlement_signals)
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
        usage_buckets: take(&out.usage_buckets)
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
        anomalies: take(&out.anomalies).into_iter().map(|(_, r)| r).collect(),
        progress: take(&out.progress),
        counts: totals.snapshot(),
    })
}

type Rows<D> = Arc<Mutex<Vec<(Epoch, D)>>>;

#[derive(Clone, Default)]
struct Outputs {
    accepted: Rows<AcceptedEvent>,
    rejections: Rows<Rejection>,
    duplicates: Rows<DuplicateRow>,
    invoice_lines: Rows<Signed<InvoiceLine>>,
    rated_usage: Rows<Signed<RatedRow>>,
    line_usage: Rows<Signed<LineUsage>>,
    entitlement_signals: Rows<Signed<EntitlementSignal>>,
    shadow_invoice_lines: Rows<Signed<InvoiceLine>>,
    usage_buckets: Rows<Signed<BucketRow>>,
    anomalies: Rows<Signed<Anomaly>>,
    progress: Arc<Mutex<Vec<Progress>>>,
}

/// Records every progress commit.
struct Commits(Arc<Mutex<Vec<Progress>>>);

impl ProgressStore for Commits {
    fn commit(&mut self, p: &Progress) -> Result<(), String> {
        self.0.lock().expect("commits").push(p.clone());
        Ok(())
    }
}
