//! The meterflow dataflow, box by box as in the architecture picture, and its execution on one
//! thread, several threads, or a cluster of processes.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use differential_dataflow::AsCollection;
use meterflow_schemas::anomaly::AnomalyRules;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::hashing::dedup_worker;
use meterflow_schemas::money::Rounding;
use meterflow_schemas::rows::{
    customer_hash, ByCustomer, Counts, InvoiceLine, LineKey, LineUsage, RatedRow, UsageDelta,
};
use meterflow_schemas::tables::{self, Shape, Table, Written};
use meterflow_schemas::time::PeriodUnit;
use meterflow_schemas::validate::ValidationRules;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Concat, Concatenate, Exchange as ExchangeOp, Probe, ToStream};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::accounting::{Totals, TotalsWriter};
use crate::aggregate::{pre_aggregate, UsageRecord, UsageSum};
use crate::anomalies::{anomalies, cost_anomalies, AnomalySeed, Start};
pub use crate::cluster::Cluster;
use crate::decode::decode;
use crate::dedup::{dedup, DedupSeed, Deduplicator};
use crate::entitlements::{
    credit_burn_signals, entitlement_signals, reported, spend_burn_signals, Reported,
};
use crate::invoice::{billed_through, invoice, Clock, Through};
use crate::meters::{meter_usage, Reading};
use crate::price::{price, Priced};
use crate::progress::{commit_progress, CommitTo, Progress, ProgressStore};
use crate::rate_join::rate_join;
use crate::signed::Signed;
use crate::sink::{sink, FlushPolicy, Writers};
use crate::source::{source, BufferPool, ChunkReader, FlowControl};
use crate::watermark::{LatenessPolicy, WatermarkTracker};
use crate::{Epoch, Fatal};

/// What every worker needs to build the dataflow.
#[derive(Clone)]
pub struct Plan {
    pub catalog: Arc<Catalog>,
    pub rules: Arc<ValidationRules>,
    pub policy: LatenessPolicy,
    pub rounding: Rounding,
    /// How many epochs a source may run ahead of deduplicated work.
    pub max_epochs_ahead: u64,
    /// Input bytes a source may have read whose outputs are not yet durable.
    pub max_unwritten_bytes: u64,
    /// Invoice lines are re-priced once per this many epochs.
    pub epochs_per_round: u64,
    /// Usage buckets and anomaly detection.
    pub anomalies: AnomalyRules,
}

/// One worker's input and outputs. Every worker writes every output table: a fact table's rows
/// it produced, a signed table's rows of the customers it owns (`rows::writer_of`). Only the
/// counts and the progress commit are gathered on worker 0; the commit waits for every worker's
/// tables to be durable (their frontiers meet in timely's progress tracking).
pub struct WorkerIo {
    pub reader: Box<dyn ChunkReader>,
    /// A writer per output table (see [`meterflow_schemas::tables`]); tables without one are
    /// discarded.
    pub writers: Writers,
    pub progress: Box<dyn ProgressStore>,
    /// When the per-worker tables flush.
    pub facts_flush: FlushPolicy,
    /// When the derived tables flush.
    pub derived_flush: FlushPolicy,
    /// In a cluster of processes, the run report's invoice lines: gathered on worker 0 and
    /// given to this writer (every worker has one; only worker 0's receives rows). `None` in a
    /// single process, whose table writers share the rows they hold instead.
    pub report: Option<Box<dyn crate::sink::TableWriter<Signed<InvoiceLine>>>>,
}

/// The sinks of one worker's output tables, each placed and flushed as its description says.
struct Sinks<'s> {
    writers: Writers,
    facts: FlushPolicy,
    derived: FlushPolicy,
    fatal: Fatal,
    durable: Vec<StreamVec<'s, Epoch, ()>>,
}

impl<'s> Sinks<'s> {
    /// A fact table: each worker writes the rows it produced.
    fn facts<D: timely::ExchangeData + Clone>(
        &mut self,
        rows: StreamVec<'s, Epoch, D>,
        table: &'static Table,
    ) {
        let o = table.output();
        debug_assert_eq!((o.shape, o.written), (Shape::Facts, Written::PerWorker));
        let writer = self.writers.take(table);
        let (policy, fatal) = (self.facts, self.fatal.clone());
        self.durable
            .push(sink(rows, table.name, Pipeline, writer, policy, fatal));
    }

    /// A signed table: rows go to the worker that owns their customer, which writes them.
    fn signed<R: timely::ExchangeData + Clone + ByCustomer>(
        &mut self,
        rows: StreamVec<'s, Epoch, Signed<R>>,
        table: &'static Table,
    ) {
        let o = table.output();
        debug_assert_eq!((o.shape, o.written), (Shape::Signed, Written::ByCustomer));
        let writer = self.writers.take(table);
        let (policy, fatal) = (self.derived, self.fatal.clone());
        let by_customer = Exchange::new(|(r, _, _): &Signed<R>| customer_hash(r.customer()));
        self.durable
            .push(sink(rows, table.name, by_customer, writer, policy, fatal));
    }
}

/// State a resumed run starts from, rebuilt from the sinks by the caller.
#[derive(Default)]
pub struct Resume {
    /// The last committed point; `None` for a fresh run.
    pub progress: Option<Progress>,
    /// Idempotency keys still inside the dedup horizon.
    pub dedup: Vec<DedupSeed>,
    /// Accumulated usage per (price, (line, invoice period)): the pricing input.
    pub usage: Vec<(UsageRecord, UsageSum)>,
    /// Usage buckets and verdicts the anomaly detectors held.
    pub anomalies: AnomalySeed,
    /// Readings of non-additive meters on lines that can still change (their pricing input
    /// is not in `usage`; see [`crate::meters::reloads_readings`]).
    pub readings: Vec<(LineKey, Reading, isize)>,
    /// How far each planned contract's usage was reported, per service period (burn rate).
    pub reported: Vec<Reported>,
}

impl Resume {
    /// The first epoch the resumed run reads.
    pub fn first_epoch(&self) -> Epoch {
        self.progress.as_ref().map_or(0, |p| p.epoch + 1)
    }

    /// The watermark as of the commit, with every partition's state behind it.
    pub fn watermark(&self) -> WatermarkTracker {
        self.progress
            .as_ref()
            .map_or_else(WatermarkTracker::default, Progress::watermark_tracker)
    }
}

/// Builds the dataflow in `scope`; returns a probe that completes when every output is durable.
pub fn build<'s>(
    scope: Scope<'s, Epoch>,
    plan: &Plan,
    io: WorkerIo,
    resume: &Resume,
    totals: Totals,
    fatal: Fatal,
) -> ProbeHandle<Epoch> {
    // `admitted`: how far dedup has got (flow control); `done`: how far every output is durable.
    let admitted = ProbeHandle::new();
    let pool = BufferPool::default();
    let done = ProbeHandle::new();
    let flow = FlowControl {
        admitted: admitted.clone(),
        max_epochs_ahead: plan.max_epochs_ahead,
        durable: done.clone(),
        max_unwritten_bytes: plan.max_unwritten_bytes,
    };
    let chunks = source(
        scope,
        io.reader,
        flow,
        fatal.clone(),
        totals.clock.clone(),
        pool.clone(),
    );
    let resumed_partitions = resume.progress.as_ref().map_or(&[][..], |p| &p.partitions);
    let decoded = decode(
        chunks,
        pool,
        plan.rules.clone(),
        plan.catalog.clone(),
        resumed_partitions,
    );
    let watermarks = decoded.stats.clone().broadcast();
    let start_watermark = resume.watermark();
    let mut deduper = Deduplicator::new(
        plan.policy,
        plan.catalog.clone(),
        plan.rules.billable_environments.clone().into(),
    );
    deduper.seed(
        resume
            .dedup
            .iter()
            .filter(|s| dedup_worker(s.route, scope.peers()) == scope.index()),
    );
    let through = billed_through(
        watermarks.clone(),
        plan.catalog.clone(),
        plan.policy.period,
        Clock {
            first_epoch: resume.first_epoch(),
            watermark: start_watermark.clone(),
        },
    );
    let deduped = dedup(
        decoded.events,
        watermarks.clone(),
        deduper,
        start_watermark.clone(),
    );
    let all_usage = deduped.usage.probe_with(&admitted);
    let reported = reported(
        all_usage.clone(),
        plan.catalog.clone(),
        resume.reported.clone(),
        resume.first_epoch(),
    );
    let (additive, readings) = split_meters(all_usage, &plan.catalog);
    let detected = plan.anomalies.enabled.then(|| {
        anomalies(
            additive.clone(),
            watermarks,
            plan.anomalies.clone(),
            plan.policy.dedup_horizon,
            plan.catalog.clone(),
            Start {
                first_epoch: resume.first_epoch(),
                resumed: resume.progress.is_some(),
                watermark: start_watermark,
                epochs_per_round: plan.epochs_per_round,
            },
            &resume.anomalies,
        )
    });
    let (seed, reading_seed) = if scope.index() == 0 {
        (resume.usage.clone(), resume.readings.clone())
    } else {
        Default::default()
    };
    let first = resume.first_epoch();
    let readings = readings.concat(
        reading_seed
            .into_iter()
            .map(move |(line, r, n)| ((line, r), first, n))
            .to_stream(scope)
            .as_collection(),
    );
    let usage = pre_aggregate(additive, plan.epochs_per_round, first, seed).concat(meter_usage(
        readings,
        plan.catalog.clone(),
        plan.epochs_per_round,
    ));
    let shadow_lines = shadow(
        usage.clone(),
        through.clone(),
        plan.catalog.clone(),
        plan.policy.period,
        plan.rounding,
    );
    let rated = rate_join(usage, plan.catalog.clone());
    let priced = price(rated, plan.catalog.clone(), plan.rounding);
    let usage_lines = priced.clone().flat_map(|p| match p {
        Priced::Line(l) => Some(l),
        _ => None,
    });
    let derived_lines = invoice(
        usage_lines.clone(),
        through.clone(),
        plan.catalog.clone(),
        plan.policy.period,
        plan.rounding,
    );
    let burn = credit_burn_signals(
        derived_lines.clone(),
        plan.catalog.clone(),
        plan.policy.period,
    );
    let spend_burn = spend_burn_signals(
        usage_lines.clone(),
        reported,
        plan.catalog.clone(),
        plan.policy.period,
    );
    let signals = entitlement_signals(usage_lines, plan.catalog.clone(), plan.policy.period)
        .concat(burn)
        .concat(spend_burn)
        .inner;
    let costs = plan.anomalies.enabled.then(|| {
        cost_anomalies(
            priced.clone().flat_map(|p| match p {
                Priced::Rated(r) => Some(r),
                _ => None,
            }),
            plan.catalog.clone(),
            plan.anomalies.clone(),
            plan.policy.period,
        )
        .inner
    });
    let derived = derived_lines.map(Priced::Line);
    let priced = priced.concat(derived).inner;

    let (lines, rated_rows, line_usage) = split_priced(priced);
    let mut out = Sinks {
        writers: io.writers,
        facts: io.facts_flush.with_rounds(plan.epochs_per_round),
        derived: io.derived_flush.with_rounds(plan.epochs_per_round),
        fatal: fatal.clone(),
        durable: Vec::new(),
    };
    out.facts(deduped.accepted, &tables::USAGE_EVENTS);
    out.facts(
        decoded.rejections.concat(deduped.rejections),
        &tables::REJECTIONS,
    );
    out.facts(deduped.duplicates, &tables::DUPLICATES);
    if let Some(report) = io.report {
        let (policy, fatal) = (out.derived, out.fatal.clone());
        let gathered = sink(
            lines.clone(),
            "report",
            to_worker_zero(),
            report,
            policy,
            fatal,
        );
        out.durable.push(gathered);
    }
    out.signed(lines, &tables::INVOICE_LINES);
    out.signed(rated_rows, &tables::RATED_USAGE);
    out.signed(line_usage, &tables::LINE_USAGE);
    out.signed(shadow_lines, &tables::SHADOW_INVOICE_LINES);
    out.signed(signals, &tables::ENTITLEMENT_SIGNALS);
    if let Some(found) = detected {
        out.signed(found.buckets, &tables::USAGE_BUCKETS);
        let found_anomalies = match costs {
            Some(c) => found.anomalies.concat(c),
            None => found.anomalies,
        };
        out.signed(found_anomalies, &tables::ANOMALIES);
    }
    let counts: StreamVec<'s, Epoch, Counts> = decoded.counts.concat(deduped.counts);
    let counted = sink(
        counts.clone(),
        "counts",
        to_worker_zero(),
        Box::new(TotalsWriter(totals.clone())),
        FlushPolicy::every(Duration::ZERO),
        fatal.clone(),
    );
    let all_durable = scope
        .concatenate(out.durable)
        .concat(counted)
        .probe_with(&done);
    commit_progress(
        all_durable,
        decoded.stats.exchange(|_| 0),
        counts.exchange(|_| 0),
        plan.epochs_per_round,
        resume.progress.clone(),
        CommitTo {
            store: io.progress,
            lag: totals.lag,
        },
        fatal,
    );
    done
}

type Readings<'s> = differential_dataflow::VecCollection<'s, Epoch, (LineKey, Reading), isize>;

/// Usage of additive meters (sum, count) as it comes, and readings of the others.
fn split_meters<'s>(
    usage: StreamVec<'s, Epoch, UsageDelta>,
    catalog: &Arc<Catalog>,
) -> (StreamVec<'s, Epoch, UsageDelta>, Readings<'s>) {
    let additive: Vec<bool> = catalog
        .skus
        .iter()
        .map(|s| s.aggregation.is_additive())
        .collect();
    if additive.iter().all(|a| *a) {
        let none = Vec::<((LineKey, Reading), Epoch, isize)>::new()
            .to_stream(usage.scope())
            .as_collection();
        return (usage, none);
    }
    let catalog = catalog.clone();
    let readings = usage
        .clone()
        .unary(Pipeline, "Readings", move |_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for d in data.flat_map(|d| d.iter()) {
                        let aggregation = catalog.skus[d.line.sku.ix()].aggregation;
                        if let Some((line, r, n)) = Reading::of(d, aggregation) {
                            session.give(((line, r), epoch, n));
                        }
                    }
                });
            }
        })
        .as_collection();
    (usage.filter(move |d| additive[d.line.sku.ix()]), readings)
}

/// The counts, the progress commit and, in a cluster of processes, the run report's invoice
/// lines: one running total, one commit record and one report, on worker 0. No table is
/// gathered (see [`Sinks`]).
fn to_worker_zero<D: 'static>() -> Exchange<D, impl FnMut(&D) -> u64> {
    Exchange::new(|_: &D| 0u64)
}

/// Shadow billing: the usage of contracts with a shadow rate card, priced by that card's latest
/// version (usage lines, then the contract's fees, discounts, commitments, caps, credits and
/// tax), apart from the live lines.
fn shadow<'s>(
    usage: differential_dataflow::VecCollection<'s, Epoch, UsageRecord, UsageSum>,
    through: differential_dataflow::VecCollection<'s, Epoch, Through, isize>,
    catalog: Arc<Catalog>,
    unit: PeriodUnit,
    rounding: Rounding,
) -> StreamVec<'s, Epoch, Signed<InvoiceLine>> {
    let c = catalog.clone();
    let shadow_usage = usage.flat_map(move |(_live, (line, period)): UsageRecord| {
        let contract = &c.contracts[line.contract.ix()];
        contract.shadow?;
        let price = c.shadow_price_for(contract, line.sku, line.region)?;
        Some((price, (line, period)))
    });
    let lines = price(
        rate_join(shadow_usage, catalog.clone()),
        catalog.clone(),
        rounding,
    )
    .flat_map(|p| match p {
        Priced::Line(l) => Some(l),
        _ => None,
    });
    let derived = invoice(lines.clone(), through, catalog, unit, rounding);
    lines.concat(derived).inner
}

type Split<'s> = (
    StreamVec<'s, Epoch, Signed<InvoiceLine>>,
    StreamVec<'s, Epoch, Signed<RatedRow>>,
    StreamVec<'s, Epoch, Signed<LineUsage>>,
);

fn split_priced<'s>(priced: StreamVec<'s, Epoch, Signed<Priced>>) -> Split<'s> {
    use timely::dataflow::operators::vec::Map;
    let lines = priced.clone().flat_map(|(p, t, d)| match p {
        Priced::Line(l) => Some((l, t, d)),
        _ => None,
    });
    let rated = priced.clone().flat_map(|(p, t, d)| match p {
        Priced::Rated(r) => Some((r, t, d)),
        _ => None,
    });
    let usage = priced.flat_map(|(p, t, d)| match p {
        Priced::Usage(u) => Some((u, t, d)),
        _ => None,
    });
    (lines, rated, usage)
}

/// Everything a run shares between its workers.
pub struct Execution {
    pub plan: Plan,
    pub resume: Arc<Resume>,
    pub totals: Totals,
    pub fatal: Fatal,
    /// A digest of the catalog `plan` prices with. The processes of a cluster compare theirs
    /// before reading anything.
    pub catalog_digest: String,
    /// What this process reads, as far as dealing it to the workers depends on it (file sizes,
    /// Kafka partitions). The processes of a cluster compare theirs before reading anything.
    pub inputs: String,
    /// The generation this run's sink rows carry. Process 0 starts it; the other processes of a
    /// cluster only read the sinks and take process 0's (see [`execute`]).
    pub generation: u32,
    /// Set to end the run early at a committed point (a catalog change). Whichever process sets
    /// it, every process's readers stop, and [`execute`] tells every process the run stopped.
    pub stop: Arc<AtomicBool>,
    /// Set with `stop` when the process is asked to shut down (SIGTERM): every process of the
    /// cluster stops at the same committed point and [`execute`] tells every process to exit
    /// rather than resume.
    pub shutdown: Arc<AtomicBool>,
}

/// How a run ended.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Ending {
    /// Its input ended (files read to the end, Kafka idle for `exit_when_idle`).
    InputEnded,
    /// On a stop request (the catalog changed): the caller resumes from the commit.
    Stopped,
    /// On a shutdown request: everything read is committed and the caller exits.
    ShutDown,
}

/// What the processes of a cluster agree on before anything is read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct StartPoint {
    worker: usize,
    catalog_digest: String,
    inputs: String,
    resumed_after: Option<Epoch>,
    generation: u32,
}

/// Checks that every worker of every process prices with the same catalog, deals the same
/// inputs and resumes from the same commit, and returns the sink generation of worker 0
/// (process 0), which every process writes with.
///
/// Each process loads its catalog and reads the sinks' progress itself. Processes started with
/// different catalog directories, or on either side of a `catalog publish`, would bill one
/// customer's usage at two prices without knowing it; processes that see different inputs
/// (different files, or a topic whose partitions changed between their starts) would deal them
/// differently, reading some records twice and others never; a process that read progress from
/// another commit would read input twice or skip it. Every worker sends its start point to all
/// workers (a dataflow of its own, before anything is read), and all of them stop with the same
/// error on a mismatch.
fn agree_on_start(worker: &mut timely::worker::Worker, mine: StartPoint) -> Result<u32, String> {
    use std::cell::RefCell;
    use timely::dataflow::operators::{Input, Inspect};

    let seen: Rc<RefCell<Vec<StartPoint>>> = Rc::default();
    let sink = seen.clone();
    let (mut input, probe) = worker.dataflow::<u64, _, _>(move |scope| {
        let (input, points) = scope.new_input::<Vec<StartPoint>>();
        let (probe, _) = points
            .broadcast()
            .inspect(move |p| sink.borrow_mut().push(p.clone()))
            .probe();
        (input, probe)
    });
    input.send(mine.clone());
    input.close();
    while !probe.done() {
        worker.step();
    }
    let mut seen = seen.borrow().clone();
    seen.sort();
    type Describe = fn(&StartPoint) -> String;
    let checks: [(Describe, &str, &str); 3] = [
        (
            |p| p.catalog_digest.clone(),
            "loaded different catalogs",
            "give every process the same catalog directory or catalog topic, and start them again",
        ),
        (
            |p| p.inputs.clone(),
            "see different inputs",
            "give every process the same input files or Kafka topics, and start them again (a \
             topic whose partitions changed while they started converges on the next start)",
        ),
        (
            |p| {
                p.resumed_after.map_or("no commit".to_string(), |e| {
                    format!("the commit of epoch {e}")
                })
            },
            "resume from different commits",
            "another pipeline may be writing to the same database; stop every process of the \
             cluster and start them together",
        ),
    ];
    for (describe, differ, fix) in checks {
        let others: Vec<String> = seen
            .iter()
            .filter(|p| describe(p) != describe(&mine))
            .map(|p| format!("worker {} has {}", p.worker, describe(p)))
            .collect();
        if !others.is_empty() {
            return Err(format!(
                "the processes of this cluster {differ} (worker {} has {}; {}): {fix}",
                mine.worker,
                describe(&mine),
                others.join(", ")
            ));
        }
    }
    Ok(seen.first().map_or(mine.generation, |p| p.generation))
}

/// A dataflow of its own that carries a stop request (the [`Execution::stop`] flag) from the
/// worker that sees it to every worker of every process, so all readers stop, and so every
/// process learns whether the run stopped early. A worker sends while its run is going and
/// closes its input once the run is complete everywhere; after that, every worker has received
/// the same requests.
struct StopRelay {
    input: Option<timely::dataflow::InputHandleVec<u64, Ending>>,
    /// This process's requests (set by a watcher, or by the relay itself).
    stop: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    sent: Ending,
    received: Rc<Cell<Ending>>,
}

impl StopRelay {
    fn new(
        worker: &mut timely::worker::Worker,
        stop: Arc<AtomicBool>,
        shutdown: Arc<AtomicBool>,
    ) -> StopRelay {
        use timely::dataflow::operators::{Input, Inspect};
        let received = Rc::new(Cell::new(Ending::InputEnded));
        let seen = received.clone();
        let (stop_flag, shutdown_flag) = (stop.clone(), shutdown.clone());
        let input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, requests) = scope.new_input::<Vec<Ending>>();
            requests.broadcast().inspect(move |&request| {
                seen.set(seen.get().max(request));
                if request == Ending::ShutDown {
                    shutdown_flag.store(true, Ordering::SeqCst);
                }
                stop_flag.store(true, Ordering::SeqCst);
            });
            input
        });
        StopRelay {
            input: Some(input),
            stop,
            shutdown,
            sent: Ending::InputEnded,
            received,
        }
    }

    /// Sends this process's request when there is a new one (a stop, then perhaps a shutdown);
    /// closes the input once `complete`.
    fn step(&mut self, complete: bool) {
        if let Some(input) = &mut self.input {
            let request = if self.shutdown.load(Ordering::SeqCst) {
                Ending::ShutDown
            } else if self.stop.load(Ordering::SeqCst) {
                Ending::Stopped
            } else {
                Ending::InputEnded
            };
            if request > self.sent {
                input.send(request);
                // Now, not when the input closes: the other processes' readers wait for it.
                input.flush();
                self.sent = request;
            }
            if complete {
                self.input = None;
            }
        }
    }

    /// Whether any worker asked to stop or shut down (the same answer on every worker once all
    /// are done).
    fn ending(&self) -> Ending {
        self.received.get()
    }
}

/// Stops the process, naming the other processes, if the cluster has not formed (every process
/// connected) within the join timeout. Connections are retried forever, so a process whose
/// peer died while the cluster was forming would otherwise wait for it indefinitely. Nothing was
/// read yet, so nothing is lost: every process resumes from the last commit when started again.
fn stop_unless_joined(cluster: &Cluster, joined: Arc<AtomicBool>) {
    let (timeout, process) = (cluster.join_timeout, cluster.process);
    let others: Vec<String> = cluster
        .addresses
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != process)
        .map(|(i, a)| format!("process {i} at {a}"))
        .collect();
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        if !joined.load(Ordering::SeqCst) {
            tracing::error!(
                process,
                timeout_s = timeout.as_secs(),
                "the cluster did not form: {} did not connect; start every process of the cluster again (it resumes from its last commit), or raise workers.join_timeout",
                others.join(", ")
            );
            std::process::exit(1);
        }
    });
}

/// Runs the dataflow to completion on every worker of this process. `make_io` builds each
/// worker's I/O from (worker index, number of workers, sink generation). `on_progress` is called
/// on worker 0 about every `progress_every` with the running totals. Returns how the run ended:
/// at the end of its input, or early on a stop or shutdown request (the same answer in every
/// process of a cluster).
pub fn execute<F, G>(
    cluster: &Cluster,
    run: Execution,
    make_io: F,
    progress_every: Duration,
    on_progress: G,
) -> Result<Ending, String>
where
    F: Fn(usize, usize, u32) -> Result<WorkerIo, String> + Send + Sync + 'static,
    G: Fn(&Counts) + Send + Sync + 'static,
{
    let Execution {
        plan,
        resume,
        totals,
        fatal,
        catalog_digest,
        inputs,
        generation,
        stop,
        shutdown,
    } = run;
    let processes = cluster.addresses.len();
    let joined = Arc::new(AtomicBool::new(false));
    if processes > 1 {
        stop_unless_joined(cluster, joined.clone());
    }
    let (builders, others) = cluster.communication()?;
    let config = timely::WorkerConfig::default();
    let guards = timely::execute::execute_from(builders, others, config, move |worker| {
        joined.store(true, Ordering::SeqCst);
        let (index, peers) = (worker.index(), worker.peers());
        let generation = if processes > 1 {
            let mine = StartPoint {
                worker: index,
                catalog_digest: catalog_digest.clone(),
                inputs: inputs.clone(),
                resumed_after: resume.progress.as_ref().map(|p| p.epoch),
                generation,
            };
            match agree_on_start(worker, mine) {
                Ok(g) => g,
                Err(e) => {
                    fatal.set(e);
                    return Ending::InputEnded;
                }
            }
        } else {
            generation
        };
        let io = match make_io(index, peers, generation) {
            Ok(io) => io,
            Err(e) => {
                fatal.set(e);
                return Ending::InputEnded;
            }
        };
        let (plan, totals, fatal) = (plan.clone(), totals.clone(), fatal.clone());
        let totals_for_progress = totals.clone();
        let done = worker.dataflow::<Epoch, _, _>(|scope| {
            build(scope, &plan, io, &resume, totals, fatal.clone())
        });
        let mut relay = StopRelay::new(worker, stop.clone(), shutdown.clone());
        let mut last_report = std::time::Instant::now();
        loop {
            let complete = done.done();
            relay.step(complete);
            if !worker.step_or_park(Some(Duration::from_millis(5))) || fatal.is_set() {
                break;
            }
            if index == 0 {
                let frontier = done.with_frontier(|f| f.as_option().copied());
                totals_for_progress.clock.complete_before(frontier);
                if last_report.elapsed() >= progress_every {
                    on_progress(&totals_for_progress.snapshot());
                    last_report = std::time::Instant::now();
                }
            }
        }
        if index == 0 {
            totals_for_progress.clock.complete_before(None);
        }
        relay.ending()
    })?;
    let mut ending = Ending::InputEnded;
    for r in guards.join() {
        ending = ending.max(r?);
    }
    Ok(ending)
}
