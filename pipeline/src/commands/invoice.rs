//! `meterflow invoice preview`: a customer's current draft invoices (lines, subtotal,
//! discounts, tax, total), read from a run's output directory or from ClickHouse.

use std::path::PathBuf;
use std::process::ExitCode;

use meterflow_schemas::catalog::load_dir;

use crate::commands::open_clickhouse;
use crate::reports::invoice_preview::{from_clickhouse, from_output, render_lines, Filter};

#[derive(clap::Subcommand)]
pub enum InvoiceCommand {
    /// Show the current draft invoice (lines, subtotal, discounts, tax, total) of a customer,
    /// from a run's output directory or, with --clickhouse-url or a config, from ClickHouse.
    Preview {
        #[command(flatten)]
        source: InvoiceSource,
        /// Catalog directory, for customer names and units.
        #[arg(long, short = 'c')]
        catalog: Option<PathBuf>,
    },
}

/// Which invoices to read, and where from.
#[derive(clap::Args)]
pub struct InvoiceSource {
    /// Customer id (all customers when omitted).
    #[arg(long)]
    pub customer: Option<String>,
    /// Invoice period label, e.g. 2026-11 (all periods when omitted).
    #[arg(long)]
    pub period: Option<String>,
    /// Output directory of an embedded run.
    #[arg(long, short = 'o', default_value = "out")]
    pub out: PathBuf,
    /// Read from ClickHouse at this HTTP URL instead (overrides clickhouse.url).
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Configuration file; its [clickhouse] section selects ClickHouse.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl InvoiceCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let InvoiceCommand::Preview { source, catalog } = self;
        let (cfg, ch) = open_clickhouse(source.config.as_deref(), source.clickhouse_url.as_ref())?;
        let catalog = catalog.map(|d| load_dir(&d)).transpose()?;
        // Every period is read (credit balances need the history); --period selects what is
        // shown.
        let load = Filter {
            customer: source.customer.clone(),
            period: None,
        };
        let show = Filter {
            customer: source.customer.clone(),
            period: source.period,
        };
        let lines = match &ch {
            Some(ch) => from_clickhouse(ch, &load),
            None => from_output(&source.out, &load),
        }
        .map_err(anyhow::Error::msg)?;
        if !lines.iter().any(|l| show.keeps(l)) {
            if let Some(c) = source.customer {
                anyhow::bail!("no invoice lines for customer `{c}` (check the id and --period)");
            }
        }
        print!(
            "{}",
            render_lines(lines, catalog.as_ref(), cfg.billing.period, &show)
        );
        Ok(ExitCode::SUCCESS)
    }
}
