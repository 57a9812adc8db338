//! `meterflow catalog check | record | log | publish`: validate a catalog, keep its change log
//! (who changed what, field by field), and publish it to the compacted catalog topic running
//! pipelines switch catalogs from.

use std::path::PathBuf;
use std::process::ExitCode;

use meterflow_schemas::catalog::load_dir;

use crate::commands::open_clickhouse;
use crate::config::{Config, ConfigError};
use crate::sinks::catalog_log::{self, Store};
use crate::sinks::clickhouse::client::ClickHouse;

#[derive(clap::Subcommand)]
pub enum CatalogCommand {
    /// Validate a catalog directory; every problem names its file, entry and fix.
    Check { dir: PathBuf },
    /// Validate a catalog directory and record what changed since the log's last state (who,
    /// when, which fields, before and after) in the change log.
    Record {
        dir: PathBuf,
        /// Who made the change (default: METERFLOW_ACTOR, else $USER).
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Print the catalog change log.
    Log {
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a catalog directory and publish it to the compacted catalog topic, from which
    /// running pipelines pick it up (see docs/catalog.md).
    Publish {
        dir: PathBuf,
        /// Configuration file: [kafka] brokers and settings, [catalog] topic.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides kafka.brokers.
        #[arg(long)]
        brokers: Option<String>,
        /// Overrides catalog.topic.
        #[arg(long)]
        topic: Option<String>,
        /// Who publishes (default: METERFLOW_ACTOR, else $USER); the change log records it.
        #[arg(long)]
        actor: Option<String>,
        /// Validate and show what would change, without publishing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where the catalog change log lives: a JSON-lines file, or ClickHouse's `catalog_changes`.
#[derive(clap::Args)]
pub struct LogArgs {
    #[arg(long, default_value = "catalog_changes.jsonl")]
    log: PathBuf,
    /// Use ClickHouse at this HTTP URL instead (overrides clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Configuration file; its [clickhouse] section selects ClickHouse.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl LogArgs {
    fn clickhouse(&self) -> anyhow::Result<Option<ClickHouse>> {
        Ok(open_clickhouse(self.config.as_deref(), self.clickhouse_url.as_ref())?.1)
    }
}

/// Who acts: `--actor`, else METERFLOW_ACTOR, else $USER.
fn actor(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        catalog_log::actor(&std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
    })
}

impl CatalogCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            CatalogCommand::Check { dir } => check(dir),
            CatalogCommand::Record {
                dir,
                actor: who,
                log,
            } => {
                load_dir(&dir)?;
                let ch = log.clickhouse()?;
                let store = match &ch {
                    Some(ch) => Store::ClickHouse(ch),
                    None => Store::File(&log.log),
                };
                let rows =
                    catalog_log::record(&dir, &actor(who), &store).map_err(anyhow::Error::msg)?;
                if rows.is_empty() {
                    println!("no changes since the last recorded catalog");
                } else {
                    print!("{}", catalog_log::render(&rows));
                }
                Ok(ExitCode::SUCCESS)
            }
            CatalogCommand::Log { log } => {
                let ch = log.clickhouse()?;
                let store = match &ch {
                    Some(ch) => Store::ClickHouse(ch),
                    None => Store::File(&log.log),
                };
                let rows = store.read().map_err(anyhow::Error::msg)?;
                print!("{}", catalog_log::render(&rows));
                Ok(ExitCode::SUCCESS)
            }
            CatalogCommand::Publish {
                dir,
                config,
                brokers,
                topic,
                actor: who,
                dry_run,
            } => publish(dir, config, brokers, topic, actor(who), dry_run),
        }
    }
}

fn check(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let c = load_dir(&dir)?;
    let versions: usize = c.rate_cards.iter().map(|r| r.versions.len()).sum();
    println!(
        "catalog {} is valid: {} customers, {} contracts, {} SKUs, {} rate cards ({versions} versions, {} prices)",
        dir.display(),
        c.customers.len(),
        c.contracts.len(),
        c.skus.len(),
        c.rate_cards.len(),
        c.prices.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn publish(
    dir: PathBuf,
    config: Option<PathBuf>,
    brokers: Option<String>,
    topic: Option<String>,
    actor: String,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    load_dir(&dir)?;
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(b) = brokers {
        cfg.kafka.brokers = b;
    }
    if let Some(t) = topic {
        cfg.catalog.topic = t;
    }
    let name = config
        .as_ref()
        .map_or("(defaults)".to_string(), |p| p.display().to_string());
    let missing = |key: &str, fix: &str| ConfigError {
        file: name.clone(),
        message: format!("{key} is empty"),
        fix: fix.to_string(),
    };
    if cfg.kafka.brokers.is_empty() {
        return Err(missing(
            "kafka.brokers",
            "pass --brokers host:port or set [kafka] brokers",
        )
        .into());
    }
    if cfg.catalog.topic.is_empty() {
        return Err(missing(
            "catalog.topic",
            "pass --topic <name> or set [catalog] topic",
        )
        .into());
    }
    let changes = crate::sources::catalog_topic::publish(
        &dir,
        &cfg.kafka,
        &cfg.catalog.topic,
        &actor,
        dry_run,
    )
    .map_err(anyhow::Error::msg)?;
    if !changes.is_empty() {
        print!("{}", catalog_log::render(&changes));
    }
    println!(
        "{} {} changed entries of {} to `{}` as {actor}",
        if dry_run {
            "would publish"
        } else {
            "published"
        },
        changes.len(),
        dir.display(),
        cfg.catalog.topic
    );
    Ok(ExitCode::SUCCESS)
}
