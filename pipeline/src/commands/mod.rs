//! The `meterflow` commands: one file per command, each owning its command-line arguments (a
//! clap struct or subcommand enum) and the `execute` that runs it. Commands wire sources, the
//! dataflow and sinks together and print; they do not parse wire formats or write SQL
//! themselves (that is `sources/` and `sinks/`).

pub mod catalog;
pub mod dashboard;
pub mod demo;
pub mod export;
pub mod forecast;
pub mod gen;
pub mod invoice;
pub mod migrate;
pub mod quarantine;
pub mod reconcile;
pub mod report;
pub mod revenue;
pub mod run;
pub mod scorecard;
pub mod shadow;
pub mod trace;

use std::path::Path;

use crate::config::Config;
use crate::sinks::clickhouse::client::ClickHouse;

/// The config, and a ClickHouse connection when `url` or the config's `[clickhouse]` names one.
pub(crate) fn open_clickhouse(
    config: Option<&Path>,
    url: Option<&String>,
) -> anyhow::Result<(Config, Option<ClickHouse>)> {
    let mut cfg = Config::load(config)?;
    if let Some(url) = url {
        cfg.clickhouse.url = url.clone();
    }
    if !cfg.clickhouse.enabled() {
        return Ok((cfg, None));
    }
    let ch = ClickHouse::connect(&cfg.clickhouse).map_err(anyhow::Error::msg)?;
    Ok((cfg, Some(ch)))
}
