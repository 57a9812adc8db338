//! `meterflow run`: files (or stdin) in, output tables, counts and an invoice preview out.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meterflow_operators::accounting::Totals;
use meterflow_operators::aggregate::round_end;
use meterflow_operators::dataflow::{execute, Cluster, Ending, Execution, Plan, Resume, WorkerIo};
use meterflow_operators::progress::{NoProgress, Progress, ProgressStore};
use meterflow_operators::sink::{Discard, FlushPolicy, TableWriter, Writers};
use meterflow_operators::source::{resume_starts, ChunkReader, ReadAt, StripedReader};
use meterflow_operators::{Epoch, Fatal};
use meterflow_schemas::catalog::load_dir;
use meterflow_schemas::rows::Counts;
use meterflow_schemas::tables;

use crate::config::Config;
pub use crate::reports::run_report::{peak_rss_bytes, summarize, RunReport};
use crate::reports::run_report::{LinesAtEnd, ProgressLine};
use crate::sinks::alerts::AlertTables;
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::migrate::check_migrated;
use crate::sinks::clickhouse::progress::{write_progress, ClickHouseProgress, RecordedOffset};
use crate::sinks::clickhouse::restore::{restore, Restored, Role};
use crate::sinks::clickhouse::sink::{ChNames, IdRanks};
use crate::sinks::files::{prepare_out_dir, write_sources, Names};
use crate::sinks::metrics::Metrics;
use crate::sinks::outputs::{share_of, Open, Target};
use crate::sinks::ByTable;
use crate::sources::catalog_topic::{CatalogSource, Snapshot, Watcher};
use crate::sources::files::{FileInput, NoInput, StdinReader};
use crate::sources::kafka::{latest_start, partitions, GroupOffsets, KafkaConfig, KafkaReader};
use crate::sources::shutdown;

/// Everything `meterflow run` needs.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// Input files; `-` reads standard input. Empty: read the Kafka topics of the config.
    pub inputs: Vec<PathBuf>,
    pub catalog: PathBuf,
    /// Where the CSV tables go (embedded default), and `counts.json` and the preview in any case.
    pub out: PathBuf,
    pub config: Option<PathBuf>,
    /// Overrides `clickhouse.url` of the config.
    pub clickhouse_url: Option<String>,
    pub cluster: Cluster,
    pub quiet: bool,
    /// Serve Prometheus `/metrics` here (overrides `metrics.addr`).
    pub metrics_addr: Option<String>,
}

/// Where events come from.
// One per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Input {
    Files(Vec<PathBuf>),
    Stdin,
    Kafka {
        cfg: KafkaConfig,
        partitions: Vec<(String, i32)>,
    },
}

impl Input {
    /// What dealing this input to the workers depends on: the files' sizes (`file_sizes`; their
    /// chunks are dealt by offset), or the Kafka partitions in dealing order.
    fn dealt(&self, file_sizes: &[u64]) -> String {
        match self {
            Input::Files(_) => {
                let sizes: Vec<String> = file_sizes.iter().map(u64::to_string).collect();
                format!("files of {} bytes", sizes.join(", "))
            }
            Input::Stdin => "standard input".into(),
            Input::Kafka { partitions, .. } => {
                let list: Vec<String> =
                    partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                format!("Kafka partitions {}", list.join(" "))
            }
        }
    }

    fn sources(&self) -> Vec<String> {
        match self {
            Input::Files(paths) => paths.iter().map(|p| p.display().to_string()).collect(),
            Input::Stdin => vec!["(stdin)".into()],
            Input::Kafka { cfg, .. } => cfg.topics.clone(),
        }
    }
}

pub fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    shutdown::install();
    let metrics = serve_metrics(args)?;
    loop {
        let (mut report, ending) = run_until_catalog_change(args, metrics.as_ref())?;
        match ending {
            Ending::InputEnded => {}
            Ending::ShutDown => {
                tracing::info!(
                    committed = report.counts.received,
                    "shut down on request: everything read is committed; the next start \
                     resumes from here"
                );
            }
            Ending::Stopped => {
                if let Some(m) = &metrics {
                    m.not_ready("switching to a new catalog");
                }
                tracing::info!("drained and committed; resuming with the new catalog");
                continue;
            }
        }
        report.elapsed = started.elapsed();
        return Ok(report);
    }
}

/// Starts serving `/metrics` when `--metrics-addr` or `metrics.addr` asks for it.
fn serve_metrics(args: &RunArgs) -> anyhow::Result<Option<Arc<Metrics>>> {
    let addr = match &args.metrics_addr {
        Some(a) => a.clone(),
        None => Config::load(args.config.as_deref())?.metrics.addr,
    };
    if addr.is_empty() {
        return Ok(None);
    }
    let metrics = Arc::new(Metrics::new().map_err(anyhow::Error::msg)?);
    metrics.serve(&addr).map_err(anyhow::Error::msg)?;
    Ok(Some(metrics))
}

/// One run with one catalog: until the input ends, until a running pipeline's catalog changes
/// (then [`Ending::Stopped`]: everything read is committed and the caller resumes from there),
/// or until it is asked to shut down ([`Ending::ShutDown`], committed too).
/// How long a failed run may take to stop before the process exits regardless.
const STUCK_AFTER_FAILURE: Duration = Duration::from_secs(30);

fn run_until_catalog_change(
    args: &RunArgs,
    metrics: Option<&Arc<Metrics>>,
) -> anyhow::Result<(RunReport, Ending)> {
    let started = Instant::now();
    let mut setup = Setup::load(args)?;
    let setup_sources = setup.input.sources();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output directory {}", args.out.display()))?;
    // Outputs: ClickHouse (resuming from its last commit), or the embedded CSV tables.
    let restored = open_outputs(args, &setup)?;
    setup.resume_files(&restored)?;
    let totals = Totals::default();
    if let Some(p) = &restored.resume.progress {
        totals.seed(p.counts.clone());
    }
    let mut kept = ByTable::default();
    let lines = Arc::new(LinesAtEnd::keep(&mut kept, &setup.plan));
    // A pipeline that reads Kafka into ClickHouse switches to a changed catalog without a
    // restart: the watcher sets `switch`, the readers finish their epoch, the run commits and
    // resumes (see `sources::catalog_topic`). In a cluster every process watches, and the first
    // to see the change stops the readers of all (`Execution::stop`).
    let switch = Arc::new(AtomicBool::new(false));
    let _watcher = setup.watch_catalog(&switch);
    // SIGTERM stops a Kafka reader at the end of its epoch, through the same flag; other inputs
    // stop at once and resume from the last commit (see `sources::shutdown`).
    let shutdown = Arc::new(AtomicBool::new(false));
    let _graceful = matches!(setup.input, Input::Kafka { .. })
        .then(|| shutdown::graceful(switch.clone(), shutdown.clone()));
    let fatal = Fatal::default();
    // A failed run whose workers cannot stop (one blocked on an output that retries forever)
    // exits anyway: what it wrote past the last commit is deleted by the next start, as after a
    // SIGKILL.
    let _watchdog = fatal.watchdog(STUCK_AFTER_FAILURE, |why| {
        tracing::error!(error = %why, grace_s = STUCK_AFTER_FAILURE.as_secs(), "the run failed and its workers did not stop; exiting");
        std::process::exit(1);
    });
    let cluster = setup.cluster.clone();
    let progress = ProgressLine::new(setup.total_bytes(), args.quiet, setup.total_bytes() == 0);
    tracing::info!(sources = ?sources_for_log(args), workers = cluster.threads, processes = cluster.addresses.len().max(1), first_epoch = restored.resume.first_epoch(), "run started");
    let (inputs, generation) = (setup.input.dealt(&setup.file_sizes), restored.generation);
    let (wiring, resume) =
        Wiring::new(args, setup, restored, (kept, lines.clone()), switch.clone());
    if let Some(m) = metrics {
        m.ready();
    }
    let execution = Execution {
        plan: wiring.plan.clone(),
        resume: Arc::new(resume),
        totals: totals.clone(),
        fatal: fatal.clone(),
        catalog_digest: wiring.catalog_digest.clone(),
        inputs,
        generation,
        stop: switch,
        shutdown,
    };
    let ending = execute(
        &cluster,
        execution,
        move |index, peers, generation| wiring.worker_io(index, peers, generation),
        Duration::from_millis(250),
        {
            let (metrics, totals) = (metrics.cloned(), totals.clone());
            let sources = setup_sources.clone();
            move |c: &Counts| {
                progress.show(c);
                if let Some(m) = &metrics {
                    m.update(c, &totals.clock.latency(), totals.clock.in_flight());
                    m.update_lag(&totals.lag, &sources);
                }
            }
        },
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(e) = fatal.take() {
        bail!("{e}");
    }
    if !args.quiet && std::io::stderr().is_terminal() {
        crate::say!();
    }
    let report = lines.report(&totals, &setup_sources, started.elapsed(), peak_rss_bytes());
    if let Some(m) = metrics {
        m.update(&report.counts, &report.latency, totals.clock.in_flight());
        m.update_lag(&totals.lag, &setup_sources);
        let path = args.out.join(match args.cluster.process {
            0 => "metrics.prom".to_string(),
            n => format!("metrics-{n}.prom"),
        });
        std::fs::write(&path, m.render())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.cluster.process == 0 {
        report.write(&args.out)?;
    }
    Ok((report, ending))
}

/// What a run is set up with: the config, the catalog it prices with, the input.
struct Setup {
    config: Config,
    /// The catalog as read (from the directory, or the catalog topic).
    snapshot: Snapshot,
    catalog_source: CatalogSource,
    plan: Plan,
    cluster: Cluster,
    input: Input,
    file_sizes: Vec<u64>,
    /// Where each file's unread records start: 0, or where the commit the run resumes from
    /// stopped (see [`Setup::resume_files`]).
    file_starts: Vec<u64>,
    /// The commit predates per-file positions: files resume after its epoch, by chunk number.
    resume_by_epoch: bool,
    /// `[alerts]`: `None` when alerting is off; `Some(None)`: to Kafka only.
    alert_format: Option<Option<crate::sinks::alerts::Format>>,
}

impl Setup {
    fn load(args: &RunArgs) -> anyhow::Result<Setup> {
        let config_name = args
            .config
            .as_ref()
            .map_or("(defaults)".to_string(), |p| p.display().to_string());
        let mut config = Config::load(args.config.as_deref())?;
        if let Some(url) = &args.clickhouse_url {
            config.clickhouse.url = url.clone();
        }
        let rules = config.validation_rules(&config_name)?;
        let alert_format = if config.alerts.enabled() {
            Some(
                config
                    .alerts
                    .check(&config.kafka.brokers)
                    .map_err(|(message, fix)| crate::config::ConfigError {
                        file: config_name.clone(),
                        message,
                        fix,
                    })?,
            )
        } else {
            None
        };
        let catalog_source =
            CatalogSource::new(&args.catalog, &config.kafka, &config.catalog.topic);
        let snapshot = catalog_source
            .snapshot_when_reachable()
            .map_err(anyhow::Error::msg)?;
        let catalog = match &snapshot.actor {
            None => load_dir(&args.catalog)?,
            Some(_) => catalog_source.load(&snapshot).map_err(anyhow::Error::msg)?,
        };
        let plan = config.plan(rules, catalog);
        let mut cluster = args.cluster.clone();
        if cluster.threads == 0 {
            cluster.threads = config.workers.threads.max(1);
        }
        cluster.join_timeout =
            Duration::from_millis(config.workers.join_timeout.millis().max(1) as u64);
        let input = choose_input(args, &config)?;
        let file_sizes = match &input {
            Input::Files(paths) => paths
                .iter()
                .map(|p| {
                    FileInput::open(p)
                        .map(|f| f.len())
                        .with_context(|| format!("cannot open input {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<u64>>>()?,
            _ => Vec::new(),
        };
        Ok(Setup {
            config,
            snapshot,
            catalog_source,
            plan,
            cluster,
            input,
            file_starts: vec![0; file_sizes.len()],
            file_sizes,
            resume_by_epoch: false,
            alert_format,
        })
    }

    /// Where each input file continues when the run resumes a commit: from the position the
    /// commit recorded for it (what was appended since is read), from the start if the commit
    /// did not read it. Refuses a file truncated or rewritten under the commit, naming it.
    fn resume_files(&mut self, restored: &Restored) -> anyhow::Result<()> {
        let (Input::Files(_), Some(p)) = (&self.input, &restored.resume.progress) else {
            return Ok(());
        };
        if restored.by_epoch_only {
            tracing::warn!(
                epoch = p.epoch,
                "the last commit recorded no file positions (an older meterflow wrote it): \
                 resuming after its epoch by chunk number, which is only right if the files are \
                 exactly those it read"
            );
            self.resume_by_epoch = true;
            return Ok(());
        }
        let files = open_files(&self.input, &self.file_sizes).map_err(anyhow::Error::msg)?;
        self.file_starts = resume_starts(&files, &self.input.sources(), &p.positions)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The bytes this run reads.
    fn total_bytes(&self) -> u64 {
        self.file_sizes
            .iter()
            .zip(&self.file_starts)
            .map(|(n, s)| n - s)
            .sum()
    }

    /// Watches the catalog while a pipeline reads Kafka into ClickHouse (see `switch`).
    fn watch_catalog(&self, switch: &Arc<AtomicBool>) -> Option<Watcher> {
        let every = self.config.catalog.check_interval.millis();
        let kafka = matches!(self.input, Input::Kafka { .. });
        (self.config.clickhouse.enabled() && kafka && every > 0).then(|| {
            Watcher::start(
                self.catalog_source.clone(),
                self.snapshot.clone(),
                Duration::from_millis(every as u64),
                switch.clone(),
            )
        })
    }
}

/// Opens the outputs: ClickHouse, where the run resumes from the last commit, or a fresh
/// embedded output directory.
fn open_outputs(args: &RunArgs, s: &Setup) -> anyhow::Result<Restored> {
    let sources = s.input.sources();
    // `kafka.start_from = "latest"` starts where every partition ends, as a commit of an empty
    // epoch 0 (see `sources::kafka::latest_start`), taken only when there is no commit yet.
    let latest = match &s.input {
        Input::Kafka { cfg, partitions } if cfg.start_from == "latest" => Some((cfg, partitions)),
        _ => None,
    };
    let start_at_end = || latest.map(|(cfg, all)| latest_start(cfg, all)).transpose();
    if !s.config.clickhouse.enabled() {
        prepare_out_dir(&args.out)
            .with_context(|| format!("cannot prepare output directory {}", args.out.display()))?;
        write_sources(&args.out, &sources).context("cannot write sources.csv")?;
        let mut fresh = Restored::default();
        fresh.resume.progress = start_at_end().map_err(anyhow::Error::msg)?;
        return Ok(fresh);
    }
    let ch = ClickHouse::connect(&s.config.clickhouse).map_err(anyhow::Error::msg)?;
    let (major, minor) = ch.version().map_err(anyhow::Error::msg)?;
    tracing::info!(url = %s.config.clickhouse.url, version = %format!("{major}.{minor}"), "clickhouse connected");
    check_migrated(&ch).map_err(anyhow::Error::msg)?;
    // Process 0 writes for the cluster; the others only read (see `sinks::clickhouse::restore`).
    let role = if args.cluster.process == 0 {
        Role::Writer
    } else {
        Role::Reader
    };
    // Every catalog a production pipeline bills with is in the change log.
    if role == Role::Writer {
        let actor = s
            .snapshot
            .actor
            .clone()
            .unwrap_or_else(|| crate::sinks::catalog_log::actor("meterflow run"));
        let recorded = crate::sinks::catalog_log::record_entries(
            &s.snapshot.entries,
            &actor,
            &crate::sinks::catalog_log::Store::ClickHouse(&ch),
        )
        .map_err(anyhow::Error::msg)?;
        if !recorded.is_empty() {
            tracing::info!(
                changes = recorded.len(),
                "catalog changes recorded in catalog_changes"
            );
        }
    }
    let digest = s.snapshot.digest();
    let mut restored =
        restore(&ch, &s.plan, &digest, &sources, role).map_err(anyhow::Error::msg)?;
    if restored.resume.progress.is_some() {
        return Ok(restored);
    }
    // No commit yet. Under `latest`, the writer records where the pipeline starts before
    // anything is read, so a run killed before its own first commit resumes there; the other
    // processes of a cluster wait for that record and start from it too.
    match role {
        Role::Writer => {
            let Some(start) = start_at_end().map_err(anyhow::Error::msg)? else {
                return Ok(restored);
            };
            write_progress(&ch, restored.generation, &start, (&sources, &[]), &digest)
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                partitions = start.positions.len(),
                "kafka.start_from = latest: every partition's end recorded as where the pipeline starts"
            );
            restored.resume.progress = Some(start);
            Ok(restored)
        }
        Role::Reader if latest.is_some() => {
            let deadline = Instant::now() + s.cluster.join_timeout.max(Duration::from_secs(60));
            tracing::info!("kafka.start_from = latest: waiting for process 0 to record where the pipeline starts");
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let r =
                    restore(&ch, &s.plan, &digest, &sources, role).map_err(anyhow::Error::msg)?;
                if r.resume.progress.is_some() {
                    return Ok(r);
                }
                if Instant::now() > deadline {
                    bail!("kafka.start_from = latest: process 0 has not recorded where the pipeline starts in sink_progress; start process 0 of the cluster (it records each partition's end before anything is read), then this one again");
                }
            }
        }
        Role::Reader => Ok(restored),
    }
}

/// The input files, each read up to the size it had when the run started (`sizes`), so all
/// workers plan the same chunks while a producer appends; the rest is for the next run.
fn open_files(input: &Input, sizes: &[u64]) -> Result<Vec<FileInput>, String> {
    let Input::Files(paths) = input else {
        return Ok(Vec::new());
    };
    paths
        .iter()
        .zip(sizes)
        .map(|(p, &len)| {
            FileInput::open_upto(p, len)
                .map_err(|e| format!("cannot open input {}: {e}", p.display()))
        })
        .collect()
}

/// How each worker's input and outputs are made (`make_io` of [`execute`]): shared by the
/// workers of this process.
struct Wiring {
    input: Input,
    plan: Plan,
    config: Config,
    out: PathBuf,
    sources: Vec<String>,
    catalog_digest: String,
    /// The last committed epoch and the commit, if the run resumes.
    committed: Option<Epoch>,
    resume_from: Option<Progress>,
    first_round: Epoch,
    /// Per input file: its size when the run started, and where its unread records start.
    file_sizes: Vec<u64>,
    file_starts: Vec<u64>,
    resume_by_epoch: bool,
    /// Reader positions of inputs this run does not read, carried into its commits.
    elsewhere: Vec<RecordedOffset>,
    /// What the signed tables held at the commit, and how many of this process's workers have
    /// still to take their share; dropped once the last one has (it can be large).
    restored: Mutex<(ByTable, usize)>,
    /// Tables whose rows the run reads when it ends.
    kept: ByTable,
    /// The invoice lines of the run report.
    lines: Arc<LinesAtEnd>,
    /// Processes in the cluster (1: this one alone).
    processes: usize,
    alert_format: Option<Option<crate::sinks::alerts::Format>>,
    switch: Arc<AtomicBool>,
}

impl Wiring {
    /// The wiring, and the state the dataflow resumes from.
    fn new(
        args: &RunArgs,
        s: Setup,
        restored: Restored,
        (kept, lines): (ByTable, Arc<LinesAtEnd>),
        switch: Arc<AtomicBool>,
    ) -> (Wiring, Resume) {
        let resume_from = restored.resume.progress.clone();
        let first_round = round_end(restored.resume.first_epoch(), s.plan.epochs_per_round);
        let wiring = Wiring {
            sources: s.input.sources(),
            input: s.input,
            plan: s.plan,
            config: s.config,
            out: args.out.clone(),
            catalog_digest: s.snapshot.digest(),
            committed: resume_from.as_ref().map(|p| p.epoch),
            resume_from,
            first_round,
            file_sizes: s.file_sizes,
            file_starts: s.file_starts,
            resume_by_epoch: s.resume_by_epoch,
            elsewhere: restored.elsewhere,
            restored: Mutex::new((restored.held, s.cluster.threads.max(1))),
            kept,
            lines,
            processes: s.cluster.addresses.len().max(1),
            alert_format: s.alert_format,
            switch,
        };
        (wiring, restored.resume)
    }

    fn worker_io(&self, index: usize, peers: usize, generation: u32) -> Result<WorkerIo, String> {
        let reader = self.reader(index, peers)?;
        let plan = &self.plan;
        let (catalog, period) = (plan.catalog.clone(), plan.policy.period);
        let billable_environments = plan.rules.billable_environments.clone();
        let ch = &self.config.clickhouse;
        let (target, progress, facts_flush, derived_flush): (_, Box<dyn ProgressStore>, _, _) =
            if ch.enabled() {
                let names = ChNames {
                    ranks: IdRanks::of(&catalog),
                    catalog,
                    sources: self.sources.clone(),
                    billable_environments,
                    period,
                    generation,
                    worker: index as u32,
                };
                let millis = |s: meterflow_schemas::time::Span| {
                    Duration::from_millis(s.millis().max(0) as u64)
                };
                let policy = FlushPolicy {
                    max_rows: ch.flush_rows,
                    max_delay: millis(ch.flush_interval),
                    epochs_per_round: 0,
                    min_delay: millis(ch.min_flush_interval),
                };
                let target = Target::ClickHouse {
                    cfg: ch.clone(),
                    names: Arc::new(names),
                };
                (
                    target,
                    self.progress_store(index, generation)?,
                    policy,
                    policy,
                )
            } else {
                let names = Names::new(catalog, billable_environments, period);
                let every =
                    Duration::from_millis(self.config.output.flush_interval.millis().max(0) as u64);
                let target = Target::Files {
                    out: self.out.clone(),
                    names: Arc::new(names),
                };
                let policy = FlushPolicy::every(every);
                (target, Box::new(NoProgress) as Box<_>, policy, policy)
            };
        // Each worker writes the signed rows (and sends the alerts) of the customers it owns,
        // so it holds their restored rows.
        // In a cluster, worker 0 also starts the run report from every restored invoice line.
        let report_all = self.processes > 1 && index == 0;
        let (restored, all_lines) = {
            let mut held = self.restored.lock().expect("restored rows");
            let share = share_of(&held.0, index, peers);
            let all_lines: Option<Vec<_>> = report_all.then(|| {
                held.0
                    .peek(&tables::INVOICE_LINES)
                    .cloned()
                    .unwrap_or_default()
            });
            held.1 = held.1.saturating_sub(1);
            if held.1 == 0 {
                held.0 = ByTable::default();
            }
            (share, all_lines)
        };
        let alerts = AlertTables {
            format: &self.alert_format,
            config: &self.config.alerts,
            kafka: &self.config.kafka,
            catalog: &plan.catalog,
            unit: plan.policy.period,
            round_end: self.first_round,
        };
        // In a cluster, no process holds every customer's lines: the report's are gathered on
        // worker 0 by the dataflow, and the table writers keep none.
        let no_kept = ByTable::default();
        let (kept, report) = if self.processes > 1 {
            let report: Box<dyn TableWriter<_>> = match all_lines {
                Some(held) => self.lines.gathered(held, self.first_round),
                None => Box::new(Discard),
            };
            (&no_kept, Some(report))
        } else {
            (&self.kept, None)
        };
        let writers = Open {
            worker: index,
            target: &target,
            plan,
            first_round: self.first_round,
            restored,
            kept,
            alerts: &alerts,
            writers: Writers::default(),
        }
        .all()?;
        Ok(WorkerIo {
            reader,
            writers,
            progress,
            facts_flush,
            derived_flush,
            report,
        })
    }

    fn reader(&self, index: usize, peers: usize) -> Result<Box<dyn ChunkReader>, String> {
        let chunk_bytes = self.config.input.chunk_bytes;
        Ok(match &self.input {
            Input::Stdin if index == 0 => {
                Box::new(StdinReader::new(chunk_bytes, 0, self.committed))
            }
            Input::Stdin => Box::new(NoInput),
            Input::Files(_) => {
                let files = open_files(&self.input, &self.file_sizes)?;
                if self.resume_by_epoch {
                    let mut r = StripedReader::new(files, chunk_bytes, index, peers);
                    r.skip_through(self.committed.unwrap_or_default());
                    Box::new(r)
                } else {
                    let starts = self.file_starts.clone();
                    let who = (index, peers);
                    Box::new(StripedReader::resuming(
                        files,
                        starts,
                        self.committed,
                        chunk_bytes,
                        who,
                    ))
                }
            }
            Input::Kafka { cfg, partitions } => Box::new(
                KafkaReader::new(cfg, partitions, index, peers, self.resume_from.as_ref())?
                    .stopping_on(self.switch.clone()),
            ),
        })
    }

    /// Worker 0 commits progress for the process (see `operators::progress`).
    fn progress_store(
        &self,
        index: usize,
        generation: u32,
    ) -> Result<Box<dyn ProgressStore>, String> {
        if index != 0 {
            return Ok(Box::new(NoProgress));
        }
        Ok(Box::new(ClickHouseProgress {
            ch: ClickHouse::connect(&self.config.clickhouse)?,
            sources: self.sources.clone(),
            generation,
            catalog_digest: self.catalog_digest.clone(),
            resumed_after: self.committed,
            sweep_until: Instant::now() + Duration::from_secs(30),
            last_sweep: None,
            group: match &self.input {
                Input::Kafka { cfg, .. } => Some(GroupOffsets::new(cfg)?),
                _ => None,
            },
            elsewhere: self.elsewhere.clone(),
        }))
    }
}

fn sources_for_log(args: &RunArgs) -> Vec<String> {
    args.inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn choose_input(args: &RunArgs, config: &Config) -> anyhow::Result<Input> {
    let stdin = args.inputs.iter().any(|p| p.as_os_str() == "-");
    if stdin && args.inputs.len() > 1 {
        bail!("`-` (standard input) cannot be combined with files; pass either files or -");
    }
    if stdin {
        return Ok(Input::Stdin);
    }
    if !args.inputs.is_empty() {
        return Ok(Input::Files(args.inputs.clone()));
    }
    if config.kafka.enabled() {
        config.kafka.check().map_err(anyhow::Error::msg)?;
        let partitions = partitions(&config.kafka).map_err(anyhow::Error::msg)?;
        tracing::info!(brokers = %config.kafka.brokers, topics = ?config.kafka.topics, partitions = partitions.len(), "kafka input");
        return Ok(Input::Kafka {
            cfg: config.kafka.clone(),
            partitions,
        });
    }
    bail!("no input given; pass --input <file.jsonl>..., --input - for standard input, or configure [kafka] brokers and topics")
}

/// `meterflow run`.
#[derive(clap::Args)]
pub struct RunCommand {
    /// Input JSONL files (native events or CloudEvents, one per line); `-` reads stdin.
    /// Without --input, the Kafka topics of the config ([kafka]) are read.
    #[arg(long, short = 'i', num_args = 1..)]
    input: Vec<PathBuf>,
    /// Catalog directory (customers, contracts, SKUs, rate cards as TOML).
    #[arg(long, short = 'c')]
    catalog: PathBuf,
    /// Output directory for the tables, counts.json and invoice_preview.txt.
    #[arg(long, short = 'o', default_value = "out")]
    out: PathBuf,
    /// Configuration file (see meterflow.example.toml); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write to ClickHouse at this HTTP URL (overrides clickhouse.url); resumes after the
    /// last committed epoch.
    #[arg(long)]
    clickhouse_url: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// No progress line and no preview on stdout.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run goes on (overrides
    /// metrics.addr; e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<String>,
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let cluster = self.cluster.cluster()?;
        let process = cluster.process;
        let args = RunArgs {
            inputs: self.input,
            catalog: self.catalog,
            out: self.out.clone(),
            config: self.config,
            clickhouse_url: self.clickhouse_url,
            cluster,
            quiet: self.quiet,
            metrics_addr: self.metrics_addr,
        };
        let report = run(&args)?;
        if process != 0 {
            crate::say!("process {process} finished; process 0 reports the totals, the preview and counts.json");
            return Ok(ExitCode::SUCCESS);
        }
        if !self.quiet {
            // The run has committed: a reader that closed stdout early (`| head`) is no failure.
            let _ = writeln!(std::io::stdout(), "{}", report.preview);
        }
        summarize(&report, &self.out);
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Worker threads per process (default: workers.threads from the config, else 1).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Number of processes in a timely cluster.
    #[arg(long, short = 'n', default_value_t = 1, env = "METERFLOW_PROCESSES")]
    processes: usize,
    /// Index of this process in the cluster.
    #[arg(long, short = 'p')]
    process: Option<usize>,
    /// File with one host:port per process.
    #[arg(long, conflicts_with = "peers")]
    hostfile: Option<PathBuf>,
    /// The address of process `{i}`, instead of --hostfile: e.g.
    /// `meterflow-{i}.meterflow-peers:2101` (a StatefulSet's headless Service).
    #[arg(long, env = "METERFLOW_PEERS")]
    peers: Option<String>,
    /// This process's StatefulSet pod name, instead of --process: its ordinal
    /// (`meterflow-2` → 2) is the process index.
    #[arg(long, env = "METERFLOW_POD_NAME", conflicts_with = "process")]
    pod_name: Option<String>,
}

impl ClusterArgs {
    pub fn cluster(&self) -> anyhow::Result<Cluster> {
        use crate::config::cluster;
        let process = match (&self.process, &self.pod_name) {
            (Some(p), _) => *p,
            (None, Some(pod)) if self.processes > 1 => {
                cluster::ordinal(pod).map_err(anyhow::Error::msg)?
            }
            _ => 0,
        };
        let mut addresses = Vec::new();
        if self.processes > 1 {
            addresses = match (&self.peers, &self.hostfile) {
                (Some(template), _) => {
                    cluster::peers(template, self.processes).map_err(anyhow::Error::msg)?
                }
                (None, Some(hostfile)) => {
                    let text = std::fs::read_to_string(hostfile).map_err(|e| {
                        anyhow::anyhow!("cannot read --hostfile {}: {e}", hostfile.display())
                    })?;
                    cluster::hostfile(&text, &hostfile.display().to_string(), self.processes)
                        .map_err(anyhow::Error::msg)?
                }
                (None, None) => anyhow::bail!(
                    "--processes {} needs --hostfile with one host:port per line, or --peers \
                     with the address of process {{i}}",
                    self.processes
                ),
            };
            if process >= self.processes {
                anyhow::bail!(
                    "process {process} (from {}) must be below --processes {}",
                    if self.process.is_some() {
                        "--process"
                    } else {
                        "the pod name"
                    },
                    self.processes
                );
            }
        }
        Ok(Cluster {
            threads: self.workers.unwrap_or(0),
            process,
            addresses,
            // Replaced by workers.join_timeout once the config is read.
            join_timeout: Cluster::DEFAULT_JOIN_TIMEOUT,
        })
    }
}
