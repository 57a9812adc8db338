//! `meterflow run`: files (or stdin) in, output tables, counts and an invoice preview out.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meterflow_operators::accounting::{Latency, Totals};
use meterflow_operators::aggregate::round_end;
use meterflow_operators::dataflow::{execute, Cluster, Execution, Plan, WorkerIo};
use meterflow_operators::progress::{NoProgress, ProgressStore};
use meterflow_operators::signed::{Horizon, Signed, SignedState};
use meterflow_operators::sink::{FlushPolicy, TableWriter};
use meterflow_operators::source::{ChunkReader, ReadAt, StripedReader};
use meterflow_operators::Fatal;
use meterflow_schemas::anomaly::{BucketRow, Detector};
use meterflow_schemas::catalog::load_dir;
use meterflow_schemas::money::Amount;
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::rows::{Counts, InvoiceLine};
use meterflow_schemas::time::EventTime;

use crate::config::Config;
use crate::reports::invoice_preview;
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::derived as ch_derived;
use crate::sinks::clickhouse::migrate::check_migrated;
use crate::sinks::clickhouse::progress::ClickHouseProgress;
use crate::sinks::clickhouse::restore::{restore, Restored, Role};
use crate::sinks::clickhouse::sink::{self as ch_sink, ChNames, IdRanks};
use crate::sinks::files::{
    anomalies_writer, duplicates_writer, entitlement_signals_writer, invoice_lines_writer,
    line_usage_writer, prepare_out_dir, rated_usage_writer, rejections_writer,
    shadow_invoice_lines_writer, usage_buckets_writer, usage_events_writer, write_sources,
    HeldRows, Names,
};
use crate::sources::catalog_topic::{CatalogSource, Watcher};
use crate::sources::files::{FileInput, NoInput, StdinReader};
use crate::sources::kafka::{partitions, GroupOffsets, KafkaConfig, KafkaReader};

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
}

/// What a run produced.
pub struct RunReport {
    pub counts: Counts,
    /// Sum of the exact amounts of the current invoice lines.
    pub invoice_total_exact: Amount,
    /// Read-to-output latency of epochs.
    pub latency: Latency,
    pub preview: String,
    pub elapsed: Duration,
    pub peak_rss_bytes: u64,
}

/// Where events come from.
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
    loop {
        let (mut report, switched) = run_until_catalog_change(args)?;
        if !switched {
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        tracing::info!("drained and committed; resuming with the new catalog");
    }
}

/// One run with one catalog: until the input ends, or until a running pipeline's catalog
/// changes (then `true`: everything read is committed and the caller resumes from there).
fn run_until_catalog_change(args: &RunArgs) -> anyhow::Result<(RunReport, bool)> {
    let started = Instant::now();
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
    let catalog_source = CatalogSource::new(&args.catalog, &config.kafka, &config.catalog.topic);
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
    let total_bytes: u64 = file_sizes.iter().sum();
    let catalog_digest = snapshot.digest();
    let sources = input.sources();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output directory {}", args.out.display()))?;

    // Outputs: ClickHouse (resuming from its last commit), or the embedded CSV tables.
    let totals = Totals::default();
    let restored = if config.clickhouse.enabled() {
        let ch = ClickHouse::connect(&config.clickhouse).map_err(anyhow::Error::msg)?;
        let (major, minor) = ch.version().map_err(anyhow::Error::msg)?;
        tracing::info!(url = %config.clickhouse.url, version = %format!("{major}.{minor}"), "clickhouse connected");
        check_migrated(&ch).map_err(anyhow::Error::msg)?;
        // Process 0 writes for the cluster; the others only read (see `sinks::clickhouse::restore`).
        let role = if args.cluster.process == 0 {
            Role::Writer
        } else {
            Role::Reader
        };
        // Every catalog a production pipeline bills with is in the change log.
        if role == Role::Writer {
            let actor = snapshot
                .actor
                .clone()
                .unwrap_or_else(|| crate::sinks::catalog_log::actor("meterflow run"));
            let recorded = crate::sinks::catalog_log::record_entries(
                &snapshot.entries,
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
        restore(&ch, &plan, &catalog_digest, &sources, role).map_err(anyhow::Error::msg)?
    } else {
        prepare_out_dir(&args.out)
            .with_context(|| format!("cannot prepare output directory {}", args.out.display()))?;
        write_sources(&args.out, &sources).context("cannot write sources.csv")?;
        Restored::default()
    };
    if let Some(p) = &restored.resume.progress {
        totals.seed(p.counts.clone());
    }
    let first_epoch = restored.resume.first_epoch();
    let committed = restored.resume.progress.as_ref().map(|p| p.epoch);
    let generation = restored.generation;
    let resume_from = restored.resume.progress.clone();
    let first_round = round_end(first_epoch, plan.epochs_per_round);
    let held = Mutex::new(Some((
        restored.invoice_lines,
        restored.rated_usage,
        restored.line_usage,
        restored.entitlement_signals,
        restored.shadow_invoice_lines,
        restored.usage_buckets,
        restored.anomalies,
    )));

    let current_lines: Arc<HeldRows<InvoiceLine>> = HeldRows::new();
    let flush_every = Duration::from_millis(config.output.flush_interval.millis().max(0) as u64);
    let chunk_bytes = config.input.chunk_bytes;
    let out = args.out.clone();
    let io_lines = current_lines.clone();
    let ch_cfg = config.clickhouse.clone();
    let billable = plan.rules.billable_environments.clone();
    let (catalog, period) = (plan.catalog.clone(), plan.policy.period);
    let alerts_cfg = config.alerts.clone();
    let alerts_kafka = config.kafka.clone();
    let (alert_catalog, alert_unit) = (plan.catalog.clone(), plan.policy.period);
    let bucket_span = bucket_span(&plan);
    // A pipeline that reads Kafka into ClickHouse switches to a changed catalog without a
    // restart: the watcher sets `switch`, the readers finish their epoch, the run commits and
    // resumes (see `sources::catalog_topic`). In a cluster every process watches, and the first to see
    // the change stops the readers of all (`Execution::stop`).
    let switch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let check_every = config.catalog.check_interval.millis();
    let _watcher =
        (config.clickhouse.enabled() && matches!(input, Input::Kafka { .. }) && check_every > 0)
            .then(|| {
                Watcher::start(
                    catalog_source.clone(),
                    snapshot.clone(),
                    Duration::from_millis(check_every as u64),
                    switch.clone(),
                )
            });
    let stop = switch.clone();
    let dealt = input.dealt(&file_sizes);
    let progress_digest = catalog_digest.clone();
    let make_io = move |index: usize, peers: usize, generation: u32| -> Result<WorkerIo, String> {
        let alerts = AlertTables {
            format: &alert_format,
            index,
            config: &alerts_cfg,
            kafka: &alerts_kafka,
            catalog: &alert_catalog,
            unit: alert_unit,
            round_end: first_round,
        };
        let reader: Box<dyn ChunkReader> = match &input {
            Input::Stdin if index == 0 => Box::new(StdinReader::new(chunk_bytes, 0)),
            Input::Stdin => Box::new(NoInput),
            Input::Files(paths) => {
                let files = paths
                    .iter()
                    .map(|p| {
                        FileInput::open(p)
                            .map_err(|e| format!("cannot open input {}: {e}", p.display()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut r = StripedReader::new(files, chunk_bytes, index, peers);
                if let Some(e) = committed {
                    r.skip_through(e);
                }
                Box::new(r)
            }
            Input::Kafka { cfg, partitions } => Box::new(
                KafkaReader::new(cfg, partitions, index, peers, resume_from.as_ref())?
                    .stopping_on(switch.clone()),
            ),
        };
        if ch_cfg.enabled() {
            let names = Arc::new(ChNames {
                catalog: catalog.clone(),
                sources: sources.clone(),
                billable_environments: billable.clone(),
                period,
                generation,
                worker: index as u32,
                ranks: IdRanks::of(&catalog),
            });
            let connect = || ClickHouse::connect(&ch_cfg);
            // Only worker 0 receives derived rows and commits progress; it holds the restored rows.
            let (lines, rated, usage, signals, shadow, buckets, anomalies) = if index == 0 {
                held.lock().expect("held rows").take().unwrap_or_default()
            } else {
                Default::default()
            };
            let policy = FlushPolicy {
                max_rows: ch_cfg.flush_rows,
                max_delay: Duration::from_millis(ch_cfg.flush_interval.millis().max(0) as u64),
            };
            let progress: Box<dyn ProgressStore> = if index == 0 {
                Box::new(ClickHouseProgress {
                    ch: connect()?,
                    sources: sources.clone(),
                    generation,
                    catalog_digest: progress_digest.clone(),
                    resumed_after: committed,
                    sweep_until: std::time::Instant::now() + Duration::from_secs(30),
                    last_sweep: None,
                    group: match &input {
                        Input::Kafka { cfg, .. } => Some(GroupOffsets::new(cfg)?),
                        _ => None,
                    },
                })
            } else {
                Box::new(NoProgress)
            };
            return Ok(WorkerIo {
                reader,
                usage_events: Box::new(ch_sink::usage_events(connect()?, names.clone())),
                rejections: Box::new(ch_sink::rejections(connect()?, names.clone())),
                duplicates: Box::new(ch_sink::duplicates(connect()?, names.clone())),
                invoice_lines: Box::new(LinesPreview(
                    ch_derived::invoice_lines(
                        connect()?,
                        names.clone(),
                        SignedState::resumed(lines, first_round),
                    ),
                    io_lines.clone(),
                    index,
                )),
                rated_usage: Box::new(ch_derived::rated_usage(
                    connect()?,
                    names.clone(),
                    SignedState::resumed(rated, first_round),
                )),
                line_usage: Box::new(ch_derived::line_usage(
                    connect()?,
                    names.clone(),
                    SignedState::resumed(usage, first_round),
                )),
                entitlement_signals: alerts.wrap(
                    Box::new(ch_derived::entitlement_signals(
                        connect()?,
                        names.clone(),
                        SignedState::resumed(signals.clone(), first_round),
                    )),
                    signals,
                )?,
                shadow_invoice_lines: Box::new(ch_derived::shadow_invoice_lines(
                    connect()?,
                    names.clone(),
                    SignedState::resumed(shadow, first_round),
                )),
                usage_buckets: Box::new(ch_derived::usage_buckets(
                    connect()?,
                    names.clone(),
                    SignedState::resumed(buckets, first_round)
                        .forgetting(Horizon::new(bucket_start, bucket_span)),
                )),
                anomalies: alerts.wrap(
                    Box::new(ch_derived::anomalies(
                        connect()?,
                        names,
                        SignedState::resumed(anomalies.clone(), first_round),
                    )),
                    anomalies,
                )?,
                progress,
                facts_flush: policy,
                derived_flush: policy,
            });
        }
        let n = Arc::new(Names {
            catalog: catalog.clone(),
            billable_environments: billable.clone(),
            period,
        });
        Ok(WorkerIo {
            reader,
            usage_events: Box::new(usage_events_writer(&out, index, n.clone())?),
            rejections: Box::new(rejections_writer(&out, index, n.clone())?),
            duplicates: Box::new(duplicates_writer(&out, index, n.clone())?),
            invoice_lines: Box::new(invoice_lines_writer(
                &out,
                index,
                n.clone(),
                io_lines.clone(),
            )?),
            rated_usage: Box::new(rated_usage_writer(&out, index, n.clone())?),
            line_usage: Box::new(line_usage_writer(&out, index, n.clone())?),
            entitlement_signals: alerts.wrap(
                Box::new(entitlement_signals_writer(&out, index, n.clone())?),
                Vec::new(),
            )?,
            shadow_invoice_lines: Box::new(shadow_invoice_lines_writer(&out, index, n.clone())?),
            usage_buckets: Box::new(usage_buckets_writer(
                &out,
                index,
                n.clone(),
                Horizon::new(bucket_start, bucket_span),
            )?),
            anomalies: alerts.wrap(Box::new(anomalies_writer(&out, index, n)?), Vec::new())?,
            progress: Box::new(NoProgress),
            facts_flush: FlushPolicy::every(flush_every),
            derived_flush: FlushPolicy::every(flush_every),
        })
    };

    let fatal = Fatal::default();
    let progress = ProgressLine::new(total_bytes, args.quiet, total_bytes == 0);
    tracing::info!(sources = ?sources_for_log(args), workers = cluster.threads, processes = cluster.addresses.len().max(1), first_epoch, "run started");
    let execution = Execution {
        plan: plan.clone(),
        resume: Arc::new(restored.resume),
        totals: totals.clone(),
        fatal: fatal.clone(),
        catalog_digest,
        inputs: dealt,
        generation,
        stop,
    };
    let switched = execute(
        &cluster,
        execution,
        make_io,
        Duration::from_millis(250),
        move |c| progress.show(c),
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(e) = fatal.take() {
        bail!("{e}");
    }
    let counts = totals.snapshot();
    if !args.quiet && std::io::stderr().is_terminal() {
        eprintln!();
    }
    let lines = current_lines.all();
    let preview = invoice_preview::render(&lines, &plan.catalog, plan.policy.period);
    let report = RunReport {
        counts,
        latency: totals.clock.latency(),
        invoice_total_exact: lines
            .iter()
            .map(|(l, n)| Amount(l.amount_exact.0 * *n as i128))
            .sum(),
        preview,
        elapsed: started.elapsed(),
        peak_rss_bytes: peak_rss_bytes(),
    };
    if args.cluster.process == 0 {
        write_counts(&args.out, &report)?;
        std::fs::write(args.out.join("invoice_preview.txt"), &report.preview)
            .context("cannot write invoice_preview.txt")?;
        if !report.counts.balanced() {
            bail!("accounting invariant broken: received {} != accepted {} + rejected {} + duplicates {}", report.counts.received, report.counts.accepted, report.counts.rejected, report.counts.duplicates);
        }
    }
    Ok((report, switched))
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

/// The invoice-lines writer, also sharing the lines it holds for the preview.
struct LinesPreview(
    ch_derived::SignedTable<InvoiceLine>,
    Arc<HeldRows<InvoiceLine>>,
    usize,
);

impl TableWriter<Signed<InvoiceLine>> for LinesPreview {
    fn write(
        &mut self,
        epoch: meterflow_operators::Epoch,
        rows: &mut Vec<Signed<InvoiceLine>>,
    ) -> Result<(), String> {
        self.0.write(epoch, rows)
    }
    fn flush(&mut self, frontier: Option<meterflow_operators::Epoch>) -> Result<(), String> {
        self.0.flush(frontier)?;
        // The preview reads the lines once the run is over.
        if frontier.is_none() {
            self.1.set(self.2, self.0.held());
        }
        Ok(())
    }
    fn start_flush(
        &mut self,
        frontier: Option<meterflow_operators::Epoch>,
    ) -> Result<bool, String> {
        let started = self.0.start_flush(frontier)?;
        if frontier.is_none() {
            self.1.set(self.2, self.0.held());
        }
        Ok(started)
    }
    fn flush_done(&mut self) -> Result<bool, String> {
        self.0.flush_done()
    }
}

/// `counts.json`: the accounting of the run, with rejections by reason code.
fn write_counts(out: &Path, r: &RunReport) -> anyhow::Result<()> {
    let c = &r.counts;
    let by_reason: BTreeMap<&str, u64> = Reason::ALL
        .iter()
        .map(|r| (r.code(), c.rejected_for(*r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let secs = r.elapsed.as_secs_f64();
    let json = serde_json::json!({
        "received": c.received,
        "accepted": c.accepted,
        "billable": c.billable,
        "non_billable": c.accepted - c.billable,
        "duplicates": c.duplicates,
        "rejected": c.rejected,
        "rejected_by_reason": by_reason,
        "out_of_order": c.out_of_order,
        "late": c.late,
        "corrections": c.corrections,
        "balanced": c.balanced(),
        "bytes": c.bytes,
        "dedup_keys": c.dedup_keys,
        "dedup_bytes": c.dedup_bytes,
        "dedup_bytes_per_key": if c.dedup_keys > 0 { c.dedup_bytes as f64 / c.dedup_keys as f64 } else { 0.0 },
        "elapsed_seconds": secs,
        "events_per_second": if secs > 0.0 { c.received as f64 / secs } else { 0.0 },
        "peak_rss_bytes": r.peak_rss_bytes,
        "invoice_total_exact": r.invoice_total_exact.to_string(),
        "epoch_latency_ms": { "epochs": r.latency.epochs, "p50": r.latency.p50_ms, "p99": r.latency.p99_ms, "max": r.latency.max_ms },
    });
    std::fs::write(
        out.join("counts.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )
    .context("cannot write counts.json")?;
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A progress line on stderr: redrawn in place on a terminal, a log line every few seconds otherwise.
struct ProgressLine {
    total_bytes: u64,
    quiet: bool,
    terminal: bool,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl ProgressLine {
    fn new(total_bytes: u64, quiet: bool, stdin: bool) -> ProgressLine {
        ProgressLine {
            total_bytes: if stdin { 0 } else { total_bytes },
            quiet,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn show(&self, c: &Counts) {
        if self.quiet {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let pct = if self.total_bytes > 0 {
            format!("{:5.1}%", 100.0 * c.bytes as f64 / self.total_bytes as f64)
        } else {
            "  -  ".into()
        };
        let line = format!(
            "{pct} {:>8.1} MB | {:>11} events | {:>9.0} ev/s | accepted {} dup {} rejected {}",
            c.bytes as f64 / 1e6,
            c.received,
            c.received as f64 / secs,
            c.accepted,
            c.duplicates,
            c.rejected
        );
        if self.terminal {
            eprint!("\r{line}");
        } else {
            let mut last = self.last_log.lock().expect("progress");
            if last.elapsed() >= Duration::from_secs(5) {
                tracing::info!("progress {line}");
                *last = Instant::now();
            }
        }
    }
}

/// How far behind the newest usage bucket a bucket row can still change: what the anomaly
/// detectors hold behind the watermark, plus the dedup horizon again for the newest bucket
/// running ahead of the watermark (tolerance, partitions that lag). The bucket writers forget
/// rows older than that, so their state stays bounded on an unbounded stream.
fn bucket_span(plan: &Plan) -> i64 {
    let w = EventTime(1_800_000_000_000);
    let horizon = plan.policy.dedup_horizon;
    let (from, _) = Detector::new(plan.anomalies.clone(), horizon, &plan.catalog).held_from(w);
    (w.0 - from.0) + horizon.millis()
}

fn bucket_start(b: &BucketRow) -> i64 {
    b.start.0
}

/// What the tables that alert (`entitlement_signals`, `anomalies`) need to send alerts.
struct AlertTables<'a> {
    /// `None`: alerting is off; `Some(None)`: to Kafka only.
    format: &'a Option<Option<crate::sinks::alerts::Format>>,
    index: usize,
    config: &'a crate::sinks::alerts::AlertsConfig,
    kafka: &'a crate::sources::kafka::KafkaConfig,
    catalog: &'a Arc<meterflow_schemas::catalog::Catalog>,
    unit: meterflow_schemas::time::PeriodUnit,
    round_end: meterflow_operators::Epoch,
}

type Writer<R> = Box<dyn meterflow_operators::sink::TableWriter<Signed<R>>>;

impl AlertTables<'_> {
    /// Worker 0 receives every row of these tables; it alone sends alerts.
    fn wrap<R: crate::sinks::alerts::Alertable>(
        &self,
        inner: Writer<R>,
        held: Vec<(R, isize, u64)>,
    ) -> Result<Writer<R>, String> {
        let (Some(format), 0) = (self.format, self.index) else {
            return Ok(inner);
        };
        let mut sinks: Vec<Box<dyn crate::sinks::alerts::AlertSink>> = Vec::new();
        if let Some(format) = format {
            sinks.push(Box::new(crate::sinks::alerts::Webhook::new(
                self.config,
                format.clone(),
            )?));
        }
        if let Some(topic) = &self.config.kafka_topic {
            sinks.push(Box::new(crate::sinks::alerts::KafkaAlerts::new(
                self.kafka, topic,
            )?));
        }
        Ok(Box::new(crate::sinks::alerts::AlertingWriter::new(
            inner,
            sinks,
            self.catalog.clone(),
            self.unit,
            held,
            self.round_end,
        )))
    }
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
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let process = self.cluster.process;
        let args = RunArgs {
            inputs: self.input,
            catalog: self.catalog,
            out: self.out.clone(),
            config: self.config,
            clickhouse_url: self.clickhouse_url,
            cluster: self.cluster.cluster()?,
            quiet: self.quiet,
        };
        let report = run(&args)?;
        if process != 0 {
            eprintln!("process {process} finished; process 0 reports the totals, the preview and counts.json");
            return Ok(ExitCode::SUCCESS);
        }
        if !self.quiet {
            println!("{}", report.preview);
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
    #[arg(long, short = 'n', default_value_t = 1)]
    processes: usize,
    /// Index of this process in the cluster.
    #[arg(long, short = 'p', default_value_t = 0)]
    process: usize,
    /// File with one host:port per process.
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    pub fn cluster(&self) -> anyhow::Result<Cluster> {
        let mut addresses = Vec::new();
        if self.processes > 1 {
            let hostfile = self.hostfile.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "--processes {} needs --hostfile with one host:port per line",
                    self.processes
                )
            })?;
            let text = std::fs::read_to_string(hostfile).map_err(|e| {
                anyhow::anyhow!("cannot read --hostfile {}: {e}", hostfile.display())
            })?;
            addresses = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(self.processes)
                .map(String::from)
                .collect();
            if addresses.len() < self.processes {
                anyhow::bail!(
                    "--hostfile {} lists {} addresses but --processes is {}",
                    hostfile.display(),
                    addresses.len(),
                    self.processes
                );
            }
            if self.process >= self.processes {
                anyhow::bail!(
                    "--process {} must be below --processes {}",
                    self.process,
                    self.processes
                );
            }
        }
        Ok(Cluster {
            threads: self.workers.unwrap_or(0),
            process: self.process,
            addresses,
            // Replaced by workers.join_timeout once the config is read.
            join_timeout: Cluster::DEFAULT_JOIN_TIMEOUT,
        })
    }
}

/// The line a finished run prints to stderr: where every record went, and how fast.
pub fn summarize(report: &RunReport, out: &std::path::Path) {
    let c = &report.counts;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "processed {} records in {:.2}s ({:.0}/s): accepted {}, duplicates {}, rejected {} — received = accepted + rejected + duplicates {}; peak memory {:.1} MiB; tables in {}",
        c.received,
        secs,
        c.received as f64 / secs.max(1e-9),
        c.accepted,
        c.duplicates,
        c.rejected,
        if c.balanced() { "holds" } else { "BROKEN" },
        report.peak_rss_bytes as f64 / (1 << 20) as f64,
        out.display()
    );
}
