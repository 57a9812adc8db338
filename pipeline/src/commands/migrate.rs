//! `meterflow migrate`: creates or upgrades meterflow's ClickHouse database and tables (the
//! statements are in `meterflow_schemas::ddl`), or prints them.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::clickhouse::migrate::{migrate, script};

/// `meterflow migrate`.
#[derive(clap::Args)]
pub struct MigrateCommand {
    /// Configuration file with the [clickhouse] section.
    #[arg(long)]
    config: Option<PathBuf>,
    /// ClickHouse HTTP URL (overrides clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Print the statements (for the configured database) instead of applying them.
    #[arg(long)]
    print: bool,
}

impl MigrateCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(url) = self.clickhouse_url {
            cfg.clickhouse.url = url;
        }
        if self.print {
            print!("{}", script(&cfg.clickhouse.database));
            return Ok(ExitCode::SUCCESS);
        }
        if !cfg.clickhouse.enabled() {
            anyhow::bail!("no ClickHouse configured; set [clickhouse] url in the config or pass --clickhouse-url");
        }
        let ch = ClickHouse::connect(&cfg.clickhouse).map_err(anyhow::Error::msg)?;
        let (major, minor) = ch.version().map_err(anyhow::Error::msg)?;
        let applied = migrate(&ch).map_err(anyhow::Error::msg)?;
        let database = &cfg.clickhouse.database;
        if applied.is_empty() {
            println!("database `{database}` on ClickHouse {major}.{minor} is up to date");
        } else {
            println!(
                "database `{database}` on ClickHouse {major}.{minor}: applied {}",
                applied.join(", ")
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
