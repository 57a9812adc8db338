//! `meterflow reconcile`: recomputes every usage invoice line from the accepted events in one plain
//! pass, independent of the dataflow, compares it with what the invoice lines bill, prints the
//! drift, records every checked line in the `reconciliation` table, and exits 3 on drift (so it
//! can run on a schedule and page someone).

use std::process::ExitCode;

use meterflow_schemas::reconcile::Reconciled;

use crate::commands::report::ReportArgs;
use crate::reports::reconcile::{from_clickhouse, from_output, render, Billing, Scope};
use crate::sinks::reconciliation;

/// Exit status when some line drifts.
pub const DRIFT: u8 = 3;

#[derive(clap::Args)]
pub struct ReconcileCommand {
    #[command(flatten)]
    report: ReportArgs,
}

impl ReconcileCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let a = &self.report;
        let r = a.open("reconcile")?;
        let scope = Scope {
            customer: a.customer.clone(),
            period: a.period.clone(),
        };
        let unit = r.cfg.billing.period;
        let billing = Billing {
            unit,
            rounding: r.cfg.billing.rounding,
        };
        let mut checked = match &r.ch {
            Some(ch) => from_clickhouse(ch, &r.catalog, billing, &scope),
            None => from_output(&a.out, &r.catalog, billing, &scope),
        }
        .map_err(anyhow::Error::msg)?;
        for c in &mut checked {
            c.checked_at = r.at;
            c.run_id = r.run_id.clone();
        }
        print!("{}", render(&checked));
        match &r.ch {
            Some(ch) => reconciliation::to_clickhouse(ch, &checked),
            None => reconciliation::to_files(&a.out, r.catalog, unit, &checked),
        }
        .map_err(anyhow::Error::msg)?;
        Ok(if checked.iter().any(Reconciled::drifts) {
            ExitCode::from(DRIFT)
        } else {
            ExitCode::SUCCESS
        })
    }
}
