//! `meterflow reconcile`: recomputes every usage invoice line from the accepted events in one plain
//! pass, independent of the dataflow, compares it with what the invoice lines bill, prints the
//! drift, records every checked line in the `reconciliation` table, and exits 3 on drift (so it
//! can run on a schedule and page someone).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use meterflow_schemas::catalog::load_dir;
use meterflow_schemas::reconcile::Reconciled;
use meterflow_schemas::time::EventTime;

use crate::commands::open_clickhouse;
use crate::reports::reconcile::{from_clickhouse, from_output, render, Scope};
use crate::sinks::reconciliation;

/// Exit status when some line drifts.
pub const DRIFT: u8 = 3;

#[derive(clap::Args)]
pub struct ReconcileCommand {
    /// Catalog directory (which meters are additive, what a distinct count counts).
    #[arg(long, short = 'c')]
    catalog: PathBuf,
    /// Output directory of an embedded run.
    #[arg(long, short = 'o', default_value = "out")]
    out: PathBuf,
    /// Check ClickHouse at this HTTP URL instead (overrides clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Configuration file; its [clickhouse] section selects ClickHouse.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only this customer.
    #[arg(long)]
    customer: Option<String>,
    /// Only this invoice period (e.g. 2026-11).
    #[arg(long)]
    period: Option<String>,
}

impl ReconcileCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (cfg, ch) = open_clickhouse(self.config.as_deref(), self.clickhouse_url.as_ref())?;
        let catalog = Arc::new(load_dir(&self.catalog)?);
        let scope = Scope {
            customer: self.customer.clone(),
            period: self.period.clone(),
        };
        let mut checked = match &ch {
            Some(ch) => from_clickhouse(ch, &catalog, cfg.billing.period, &scope),
            None => from_output(&self.out, &catalog, cfg.billing.period, &scope),
        }
        .map_err(anyhow::Error::msg)?;
        let now = EventTime::now();
        let run_id = format!("reconcile-{}", now.0);
        for c in &mut checked {
            c.checked_at = now;
            c.run_id = run_id.clone();
        }
        print!("{}", render(&checked));
        match &ch {
            Some(ch) => reconciliation::to_clickhouse(ch, &checked),
            None => reconciliation::to_files(&self.out, catalog, cfg.billing.period, &checked),
        }
        .map_err(anyhow::Error::msg)?;
        Ok(if checked.iter().any(Reconciled::drifts) {
            ExitCode::from(DRIFT)
        } else {
            ExitCode::SUCCESS
        })
    }
}
