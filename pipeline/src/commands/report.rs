//! What every report over a run's output (`reconcile`, `scorecard`) takes on the command line,
//! and opens before it reads: the configuration, ClickHouse if one is selected, the catalog,
//! and this run's time and id.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickhouse::Row;
use serde::Deserialize;

use meterflow_schemas::catalog::{load_dir, Catalog};
use meterflow_schemas::time::EventTime;

use crate::commands::open_clickhouse;
use crate::config::Config;
use crate::sinks::clickhouse::client::ClickHouse;

/// What a report over a run's output (`reconcile`, `scorecard`) reads, and which part of it.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Catalog directory (how each SKU meters, what a distinct count counts).
    #[arg(long, short = 'c')]
    pub catalog: PathBuf,
    /// Output directory of an embedded run.
    #[arg(long, short = 'o', default_value = "out")]
    pub out: PathBuf,
    /// Read ClickHouse at this HTTP URL instead (overrides clickhouse.url).
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Configuration file; its [clickhouse] section selects ClickHouse.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Only this customer.
    #[arg(long)]
    pub customer: Option<String>,
    /// Only this invoice period (e.g. 2026-11).
    #[arg(long)]
    pub period: Option<String>,
}

/// A report's inputs, opened: the config, ClickHouse if selected, the catalog, and the time and
/// id of this run of the report.
pub(crate) struct Report {
    pub cfg: Config,
    pub ch: Option<ClickHouse>,
    pub catalog: Arc<Catalog>,
    pub at: EventTime,
    pub run_id: String,
}

/// The event-time watermark an embedded run recorded in `counts.json`.
fn watermark_of_files(out: &Path) -> anyhow::Result<Option<EventTime>> {
    let path = out.join("counts.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is it a run's output directory?",
            path.display()
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is unreadable", path.display()))?;
    Ok(json["watermark"]
        .as_str()
        .and_then(|w| EventTime::parse_rfc3339(w).ok()))
}

/// The watermark of the last commit in ClickHouse.
fn watermark_of_clickhouse(ch: &ClickHouse) -> anyhow::Result<Option<EventTime>> {
    #[derive(Row, Deserialize)]
    struct Last {
        watermark_ms: i64,
    }
    let last: Vec<Last> = ch
        .fetch("SELECT watermark_ms FROM {db}.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1")
        .map_err(anyhow::Error::msg)?;
    Ok(last
        .first()
        .filter(|l| l.watermark_ms != i64::MIN)
        .map(|l| EventTime(l.watermark_ms)))
}

impl Report {
    /// The run's watermark: periods that ended before it are closed.
    pub(crate) fn watermark(&self, out: &Path) -> anyhow::Result<Option<EventTime>> {
        match &self.ch {
            Some(ch) => watermark_of_clickhouse(ch),
            None => watermark_of_files(out),
        }
    }
}

/// Now, once it is a later second than the time of every report run recorded in ClickHouse.
/// Runs are recorded in whole seconds and the dashboards show the latest, so two runs in one
/// second (a reconcile right after another) must not tie: the second waits for the next second.
fn after_every_recorded_run(ch: &ClickHouse) -> EventTime {
    #[derive(Row, Deserialize)]
    struct Latest {
        at: u32,
    }
    let latest: Result<Vec<Latest>, String> = ch.fetch(
        "SELECT toUInt32(max(t)) AS at FROM (\
         SELECT max(checked_at) AS t FROM {db}.reconciliation \
         UNION ALL SELECT max(computed_at) AS t FROM {db}.scorecard \
         UNION ALL SELECT max(computed_at) AS t FROM {db}.metering_lag \
         UNION ALL SELECT max(computed_at) AS t FROM {db}.forecast)",
    );
    let latest = match latest {
        Ok(rows) => rows.first().map_or(0, |l| i64::from(l.at)),
        Err(e) => {
            // An unmigrated database: the command itself says so when it writes.
            tracing::debug!(error = %e, "cannot read the latest report run");
            0
        }
    };
    loop {
        let now = EventTime::now();
        let wait = (latest + 1) * 1000 - now.0;
        if wait <= 0 {
            return now;
        }
        if wait > 2000 {
            // A recorded run ahead of this clock (another host's): no point waiting for it.
            tracing::warn!(
                latest_run = latest,
                "a recorded report run is ahead of this clock"
            );
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(wait as u64));
    }
}

impl ReportArgs {
    pub(crate) fn open(&self, command: &str) -> anyhow::Result<Report> {
        let (cfg, ch) = open_clickhouse(self.config.as_deref(), self.clickhouse_url.as_ref())?;
        let catalog = Arc::new(load_dir(&self.catalog)?);
        let at = match &ch {
            Some(ch) => after_every_recorded_run(ch),
            None => EventTime::now(),
        };
        Ok(Report {
            cfg,
            ch,
            catalog,
            at,
            run_id: format!("{command}-{}", at.0),
        })
    }
}
