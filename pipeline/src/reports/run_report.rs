//! What a run reports: `counts.json`, the invoice preview, the progress line while it runs and
//! the summary line when it ends.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meterflow_operators::accounting::{Latency, Totals};
use meterflow_operators::dataflow::Plan;
use meterflow_schemas::catalog::Catalog;
use meterflow_schemas::lag::PartitionLag;
use meterflow_schemas::money::Amount;
use meterflow_schemas::rejection::Reason;
use meterflow_schemas::rows::{Counts, InvoiceLine};
use meterflow_schemas::tables;
use meterflow_schemas::time::{EventTime, PeriodUnit};

use crate::reports::invoice_preview;
use crate::sinks::clickhouse::progress::named_lag;
use crate::sinks::{ByTable, HeldRows, Kept};
use meterflow_operators::signed::{Signed, SignedState};
use meterflow_operators::sink::TableWriter;
use meterflow_operators::Epoch;

/// Every invoice line of a cluster's run, on worker 0 (see [`LinesAtEnd::gathered`]).
struct GatheredLines {
    state: SignedState<InvoiceLine>,
    kept: Kept<InvoiceLine>,
}

impl TableWriter<Signed<InvoiceLine>> for GatheredLines {
    fn write(&mut self, _: Epoch, rows: &mut Vec<Signed<InvoiceLine>>) -> Result<(), String> {
        self.state.extend(rows.drain(..));
        Ok(())
    }

    fn flush(&mut self, frontier: Option<Epoch>) -> Result<(), String> {
        // Applies the completed times' changes to the held rows; nothing is written.
        self.state.changes(frontier);
        if frontier.is_none() {
            self.kept.set(self.state.held());
        }
        Ok(())
    }
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
    /// The metering lag of what the run committed, per partition read (sources named).
    pub lag: Vec<PartitionLag>,
    /// The event-time watermark of the last commit: periods ending before it are closed.
    pub watermark: Option<EventTime>,
}

/// The invoice lines a run holds when it ends: its preview and total.
pub struct LinesAtEnd {
    lines: Arc<HeldRows<InvoiceLine>>,
    catalog: Arc<Catalog>,
    period: PeriodUnit,
}

impl LinesAtEnd {
    /// Asks the writers of `invoice_lines` to keep their rows for the end of the run.
    pub fn keep(kept: &mut ByTable, plan: &Plan) -> LinesAtEnd {
        LinesAtEnd {
            lines: crate::sinks::outputs::keep(kept, &tables::INVOICE_LINES),
            catalog: plan.catalog.clone(),
            period: plan.policy.period,
        }
    }

    /// In a cluster of processes, worker 0's writer of the invoice lines the dataflow gathers
    /// for the report (`WorkerIo::report`), starting from every line held at the commit; the
    /// table writers then keep none (each holds only its own customers' lines).
    pub fn gathered(
        &self,
        held: Vec<(InvoiceLine, isize, u64)>,
        first_round: Epoch,
    ) -> Box<dyn TableWriter<Signed<InvoiceLine>>> {
        Box::new(GatheredLines {
            state: SignedState::resumed(held, first_round),
            kept: Kept {
                rows: self.lines.clone(),
                worker: 0,
            },
        })
    }

    /// The report of the run that has just ended.
    pub fn report(
        &self,
        totals: &Totals,
        sources: &[String],
        elapsed: Duration,
        peak_rss_bytes: u64,
    ) -> RunReport {
        let lines = self.lines.all();
        let (lag, watermark) = totals.lag.snapshot();
        RunReport {
            lag: named_lag(&lag, sources),
            watermark,
            counts: totals.snapshot(),
            latency: totals.clock.latency(),
            invoice_total_exact: lines
                .iter()
                .map(|(l, n)| Amount(l.amount_exact.0 * *n as i128))
                .sum(),
            preview: invoice_preview::render(&lines, &self.catalog, self.period),
            elapsed,
            peak_rss_bytes,
        }
    }
}

impl RunReport {
    /// Writes `counts.json` and `invoice_preview.txt` into `out`, and fails if the accounting
    /// invariant does not hold.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        write_counts(out, self)?;
        std::fs::write(out.join("invoice_preview.txt"), &self.preview)
            .context("cannot write invoice_preview.txt")?;
        let c = &self.counts;
        if !c.balanced() {
            bail!("accounting invariant broken: received {} != accepted {} + rejected {} + duplicates {}", c.received, c.accepted, c.rejected, c.duplicates);
        }
        Ok(())
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
        "metering_lag_ms": lag_json(&r.lag),
        "watermark": r.watermark.map(|w| w.to_string()),
    });
    std::fs::write(
        out.join("counts.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )
    .context("cannot write counts.json")?;
    Ok(())
}

/// The metering lag by stage: over every partition (`all`), and per `source#partition`.
fn lag_json(lag: &[PartitionLag]) -> serde_json::Value {
    let stages = |p: &PartitionLag| -> serde_json::Value {
        p.stages()
            .into_iter()
            .map(|(name, h)| {
                (
                    name.to_string(),
                    serde_json::to_value(h.summary()).unwrap_or_default(),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut all = PartitionLag::default();
    let mut by_partition = serde_json::Map::new();
    for p in lag {
        all.merge(p);
        by_partition.insert(format!("{}#{}", p.source, p.partition), stages(p));
    }
    serde_json::json!({ "all": stages(&all), "partitions": by_partition })
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
pub struct ProgressLine {
    total_bytes: u64,
    quiet: bool,
    terminal: bool,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl ProgressLine {
    pub fn new(total_bytes: u64, quiet: bool, stdin: bool) -> ProgressLine {
        ProgressLine {
            total_bytes: if stdin { 0 } else { total_bytes },
            quiet,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
        }
    }

    pub fn show(&self, c: &Counts) {
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
            let _ = write!(std::io::stderr(), "\r{line}");
        } else {
            let mut last = self.last_log.lock().expect("progress");
            if last.elapsed() >= Duration::from_secs(5) {
                tracing::info!("progress {line}");
                *last = Instant::now();
            }
        }
    }
}

/// The line a finished run prints to stderr: where every record went, and how fast.
pub fn summarize(report: &RunReport, out: &Path) {
    let c = &report.counts;
    let secs = report.elapsed.as_secs_f64();
    crate::say!(
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
