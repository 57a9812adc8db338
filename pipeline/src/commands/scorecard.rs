//! `meterflow scorecard`: how much metered usage got billed (capture, with the gap by cause) and
//! how many issued invoice lines changed afterwards (invoice error), per period, customer and
//! SKU; printed, and recorded in the `scorecard` table so it can be charted over time.

use std::process::ExitCode;

use meterflow_schemas::scorecard::ALL;

use crate::commands::report::ReportArgs;
use crate::reports::scorecard::{
    from_clickhouse, from_output, lag_from_clickhouse, lag_from_output, render, render_lag, Scope,
};
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
        let mut lag = match &r.ch {
            Some(ch) => lag_from_clickhouse(ch, unit),
            None => lag_from_output(&a.out),
        }
        .map_err(anyhow::Error::msg)?;
        lag.retain(|l| {
            a.period
                .as_ref()
                .is_none_or(|p| *p == l.period || l.period == ALL)
        });
        for l in &mut lag {
            l.computed_at = r.at;
            l.run_id = r.run_id.clone();
        }
        print!("{}{}", render(&rows), render_lag(&lag));
        match &r.ch {
            Some(ch) => scorecard::to_clickhouse(ch, &rows)
                .and_then(|()| scorecard::lag_to_clickhouse(ch, &lag)),
            None => scorecard::to_files(&a.out, r.catalog.clone(), unit, &rows)
                .and_then(|()| scorecard::lag_to_files(&a.out, r.catalog, unit, &lag)),
        }
        .map_err(anyhow::Error::msg)?;
        Ok(ExitCode::SUCCESS)
    }
}
