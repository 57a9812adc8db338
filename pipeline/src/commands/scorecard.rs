//! `meterflow scorecard`: how much metered usage got billed (capture, with the gap by cause) and
//! how many issued invoice lines changed afterwards (invoice error), per period, customer and
//! SKU; printed, and recorded in the `scorecard` table so it can be charted over time.

use std::process::ExitCode;

use crate::commands::report::ReportArgs;
use crate::reports::scorecard::{from_clickhouse, from_output, render, Scope};
use crate::sinks::scorecard;

#[derive(clap::Args)]
pub struct ScorecardCommand {
    #[command(flatten)]
    report: ReportArgs,
}

impl ScorecardCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let a = &self.report;
        let r = a.open("scorecard")?;
        let scope = Scope {
            customer: a.customer.clone(),
            period: a.period.clone(),
        };
        let unit = r.cfg.billing.period;
        let mut rows = match &r.ch {
            Some(ch) => from_clickhouse(ch, &r.catalog, unit, &scope),
            None => from_output(&a.out, &r.catalog, unit, &scope),
        }
        .map_err(anyhow::Error::msg)?;
        for row in &mut rows {
            row.computed_at = r.at;
            row.run_id = r.run_id.clone();
        }
        print!("{}", render(&rows));
        match &r.ch {
            Some(ch) => scorecard::to_clickhouse(ch, &rows),
            None => scorecard::to_files(&a.out, r.catalog, unit, &rows),
        }
        .map_err(anyhow::Error::msg)?;
        Ok(ExitCode::SUCCESS)
    }
}
