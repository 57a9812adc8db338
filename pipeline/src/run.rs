//! `meterflow run`: files (or stdin) in, output tables, counts and an invoice preview out.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meterflow_operators::accounting::{Latency, Totals};
use meterflow_operators::dataflow::{execute, Cluster, Execution, Resume, WorkerIo};
use meterflow_operators::progress::NoProgress;
use meterflow_operators::sink::FlushPolicy;
use meterflow_operators::source::{ChunkReader, ReadAt, StripedReader};
use meterflow_operators::Fatal;
use meterflow_schemas::catalog::load_dir;
use meterflow_schemas::money::Amount;
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::rows::{Counts, InvoiceLine};

use crate::config::Config;
use crate::file_sink::{
    duplicates_writer, invoice_lines_writer, line_usage_writer, prepare_out_dir,
    rated_usage_writer, rejections_writer, usage_events_writer, write_sources, Names,
};
use crate::file_source::{FileInput, NoInput, StdinReader};
use crate::preview;

/// Everything `meterflow run` needs.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// Input files; `-` reads standard input.
    pub inputs: Vec<PathBuf>,
    pub catalog: PathBuf,
    pub out: PathBuf,
    pub config: Option<PathBuf>,
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

pub fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let config_name = args
        .config
        .as_ref()
        .map_or("(defaults)".to_string(), |p| p.display().to_string());
    let config = Config::load(args.config.as_deref())?;
    let rules = config.validation_rules(&config_name)?;
    let catalog = load_dir(&args.catalog)?;
    let plan = config.plan(rules, catalog);
    let mut cluster = args.cluster.clone();
    if cluster.threads == 0 {
        cluster.threads = config.workers.threads.max(1);
    }
    let stdin = args.inputs.iter().any(|p| p.as_os_str() == "-");
    if stdin && args.inputs.len() > 1 {
        bail!("`-` (standard input) cannot be combined with files; pass either files or -");
    }
    if args.inputs.is_empty() {
        bail!("no input given; pass --input <file.jsonl>... or --input - for standard input");
    }
    let mut total_bytes = 0;
    for p in args.inputs.iter().filter(|p| p.as_os_str() != "-") {
        total_bytes += FileInput::open(p)
            .with_context(|| format!("cannot open input {}", p.display()))?
            .len();
    }
    prepare_out_dir(&args.out)
        .with_context(|| format!("cannot prepare output directory {}", args.out.display()))?;

    let sources: Vec<String> = args
        .inputs
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                "(stdin)".to_string()
            } else {
                p.display().to_string()
            }
        })
        .collect();
    write_sources(&args.out, &sources).context("cannot write sources.csv")?;
    let names = Arc::new(Names {
        catalog: plan.catalog.clone(),
        billable_environments: plan.rules.billable_environments.clone(),
        period: plan.policy.period,
    });
    let current_lines: Arc<Mutex<BTreeMap<InvoiceLine, isize>>> = Arc::default();
    let flush_every = Duration::from_millis(config.output.flush_interval.millis().max(0) as u64);
    let chunk_bytes = config.input.chunk_bytes;
    let (inputs, out) = (args.inputs.clone(), args.out.clone());
    let (io_names, io_lines) = (names.clone(), current_lines.clone());
    let make_io = move |index: usize, peers: usize| -> Result<WorkerIo, String> {
        let reader: Box<dyn ChunkReader> = if stdin {
            if index == 0 {
                Box::new(StdinReader::new(chunk_bytes, 0))
            } else {
                Box::new(NoInput)
            }
        } else {
            let files = inputs
                .iter()
                .map(|p| {
                    FileInput::open(p)
                        .map_err(|e| format!("cannot open input {}: {e}", p.display()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(StripedReader::new(files, chunk_bytes, index, peers))
        };
        let n = io_names.clone();
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
            line_usage: Box::new(line_usage_writer(&out, index, n)?),
            progress: Box::new(NoProgress),
            facts_flush: FlushPolicy::every(flush_every),
            derived_flush: FlushPolicy::every(flush_every),
        })
    };

    let totals = Totals::default();
    let fatal = Fatal::default();
    let progress = ProgressLine::new(total_bytes, args.quiet, stdin);
    tracing::info!(
        inputs = args.inputs.len(),
        bytes = total_bytes,
        workers = cluster.threads,
        processes = cluster.addresses.len().max(1),
        "run started"
    );
    let execution = Execution {
        plan: plan.clone(),
        resume: Arc::new(Resume::default()),
        totals: totals.clone(),
        fatal: fatal.clone(),
    };
    execute(
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
    let lines = current_lines.lock().expect("lines").clone();
    let preview = preview::render(&lines, &plan.catalog, plan.policy.period);
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
    Ok(report)
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
