//! The `meterflow` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meterflow_operators::dataflow::Cluster;
use meterflow_schemas::catalog::{load_dir, CatalogErrors};

use meterflow::config::ConfigError;
use meterflow::{catalog_log, demo, gen, preview, run, trace};

#[derive(Parser)]
#[command(
    name = "meterflow",
    version,
    about = "Streaming usage-to-cash: usage events in, exact invoice lines out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rate usage events from files, stdin or Kafka into output tables (CSV or ClickHouse) and an
    /// invoice preview.
    Run {
        /// Input JSONL files (native events or CloudEvents, one per line); `-` reads stdin.
        /// Without --input, the Kafka topics of the config ([kafka]) are read.
        #[arg(long, short = 'i', num_args = 1..)]
        input: Vec<PathBuf>,
        /// Catalog directory (customers, contracts, SKUs, rate cards as TOML).
        #[arg(long, short = 'c')]
        catalog: PathBuf,
        /// Output directory for the tables, counts.json and invoice_preview.txt.
        #[arg(long, short = 'o', default_value = "out")]
        out: PathBuf,
        /// Configuration file (see meterflow.example.toml); defaults apply without one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write to ClickHouse at this HTTP URL (overrides clickhouse.url); resumes after the
        /// last committed epoch.
        #[arg(long)]
        clickhouse_url: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// No progress line and no preview on stdout.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Generate a realistic sample, run it, and show the invoice preview and where every record went.
    Demo {
        /// Directory for the sample catalog, events and outputs.
        #[arg(long, default_value = "meterflow-demo")]
        dir: PathBuf,
        /// Worker threads.
        #[arg(long, short = 'w', default_value_t = 1)]
        workers: usize,
    },
    /// Write synthetic events and a matching catalog for benchmarks.
    Gen(gen::GenArgs),
    /// Create or upgrade meterflow's ClickHouse database and tables.
    Migrate {
        /// Configuration file with the [clickhouse] section.
        #[arg(long)]
        config: Option<PathBuf>,
        /// ClickHouse HTTP URL (overrides clickhouse.url).
        #[arg(long)]
        clickhouse_url: Option<String>,
        /// Print the statements (for the configured database) instead of applying them.
        #[arg(long)]
        print: bool,
    },
    /// Catalog tools.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Invoice tools.
    Invoice {
        #[command(subcommand)]
        command: InvoiceCommand,
    },
    /// Shadow billing tools.
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// Follow one event id through the output tables.
    Trace {
        /// Output directory of a run.
        #[arg(long, short = 'o', default_value = "out")]
        out: PathBuf,
        event_id: String,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
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
struct LogArgs {
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
    fn clickhouse(&self) -> anyhow::Result<Option<meterflow::clickhouse_client::ClickHouse>> {
        Ok(open_clickhouse(self.config.as_deref(), self.clickhouse_url.as_ref())?.1)
    }
}

/// The config, and a ClickHouse connection when `url` or the config's `[clickhouse]` names one.
fn open_clickhouse(
    config: Option<&std::path::Path>,
    url: Option<&String>,
) -> anyhow::Result<(
    meterflow::config::Config,
    Option<meterflow::clickhouse_client::ClickHouse>,
)> {
    let mut cfg = meterflow::config::Config::load(config)?;
    if let Some(url) = url {
        cfg.clickhouse.url = url.clone();
    }
    if !cfg.clickhouse.enabled() {
        return Ok((cfg, None));
    }
    let ch = meterflow::clickhouse_client::ClickHouse::connect(&cfg.clickhouse)
        .map_err(anyhow::Error::msg)?;
    Ok((cfg, Some(ch)))
}

#[derive(Subcommand)]
enum InvoiceCommand {
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
struct InvoiceSource {
    /// Customer id (all customers when omitted).
    #[arg(long)]
    customer: Option<String>,
    /// Invoice period label, e.g. 2026-11 (all periods when omitted).
    #[arg(long)]
    period: Option<String>,
    /// Output directory of an embedded run.
    #[arg(long, short = 'o', default_value = "out")]
    out: PathBuf,
    /// Read from ClickHouse at this HTTP URL instead (overrides clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// Configuration file; its [clickhouse] section selects ClickHouse.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ShadowCommand {
    /// Live against shadow totals per customer, contract and invoice period, with the
    /// difference in money and percent; from a run's output or from ClickHouse.
    Report {
        #[command(flatten)]
        source: InvoiceSource,
    },
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Worker threads per process (default: workers.threads from the config, else 1).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Number of processes in a timely cluster.
    #[arg(long, short = 'n', default_value_t = 1)]
    processes: usize,
    /// Index of this process in the cluster.
    #[arg(long, short = 'p', default_value_t = 0)]
    process: usize,
    /// File with one host:port per process.
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    fn cluster(&self) -> anyhow::Result<Cluster> {
        let mut addresses = Vec::new();
        if self.processes > 1 {
            let hostfile = self.hostfile.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "--processes {} needs --hostfile with one host:port per line",
                    self.processes
                )
            })?;
            let text = std::fs::read_to_string(hostfile).map_err(|e| {
                anyhow::anyhow!("cannot read --hostfile {}: {e}", hostfile.display())
            })?;
            addresses = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(self.processes)
                .map(String::from)
                .collect();
            if addresses.len() < self.processes {
                anyhow::bail!(
                    "--hostfile {} lists {} addresses but --processes is {}",
                    hostfile.display(),
                    addresses.len(),
                    self.processes
                );
            }
            if self.process >= self.processes {
                anyhow::bail!(
                    "--process {} must be below --processes {}",
                    self.process,
                    self.processes
                );
            }
        }
        Ok(Cluster {
            threads: self.workers.unwrap_or(0),
            process: self.process,
            addresses,
        })
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METERFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    stop_when_a_peer_is_lost();
    match dispatch(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<ConfigError>() || e.is::<CatalogErrors>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A process of a cluster whose peer is gone cannot make progress, and timely's network threads
/// panic. Say what happened and what to do, and stop at once: what the cluster had not committed
/// is deleted and read again when its processes start again.
fn stop_when_a_peer_is_lost() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("timely communication error") {
            eprintln!(
                "error: lost the connection to another process of the cluster ({message}); \
                 this process stops too: start every process of the cluster again, and it \
                 resumes from its last commit"
            );
            std::process::exit(1);
        }
        default(info);
    }));
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            input,
            catalog,
            out,
            config,
            clickhouse_url,
            cluster,
            quiet,
        } => {
            let process = cluster.process;
            let args = run::RunArgs {
                inputs: input,
                catalog,
                out: out.clone(),
                config,
                clickhouse_url,
                cluster: cluster.cluster()?,
                quiet,
            };
            let report = run::run(&args)?;
            if process != 0 {
                eprintln!("process {process} finished; process 0 reports the totals, the preview and counts.json");
                return Ok(ExitCode::SUCCESS);
            }
            if !quiet {
                println!("{}", report.preview);
            }
            summarize(&report, &out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            config,
            clickhouse_url,
            print,
        } => {
            let mut cfg = meterflow::config::Config::load(config.as_deref())?;
            if let Some(url) = clickhouse_url {
                cfg.clickhouse.url = url;
            }
            if print {
                print!(
                    "{}",
                    meterflow::clickhouse_migrate::script(&cfg.clickhouse.database)
                );
                return Ok(ExitCode::SUCCESS);
            }
            if !cfg.clickhouse.enabled() {
                anyhow::bail!("no ClickHouse configured; set [clickhouse] url in the config or pass --clickhouse-url");
            }
            let ch = meterflow::clickhouse_client::ClickHouse::connect(&cfg.clickhouse)
                .map_err(anyhow::Error::msg)?;
            let (major, minor) = ch.version().map_err(anyhow::Error::msg)?;
            let applied =
                meterflow::clickhouse_migrate::migrate(&ch).map_err(anyhow::Error::msg)?;
            if applied.is_empty() {
                println!(
                    "database `{}` on ClickHouse {major}.{minor} is up to date",
                    cfg.clickhouse.database
                );
            } else {
                println!(
                    "database `{}` on ClickHouse {major}.{minor}: applied {}",
                    cfg.clickhouse.database,
                    applied.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir, workers } => {
            let (report, story) = demo::demo(&dir, workers)?;
            println!(
                "meterflow demo: {} records from {} through catalog {}",
                report.counts.received,
                dir.join("events.jsonl").display(),
                dir.join("catalog").display()
            );
            println!("{}", report.preview);
            println!("{story}");
            summarize(&report, &dir.join("out"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen(args) => {
            let s = gen::generate(&args)?;
            println!(
                "wrote {} records ({} duplicates, {} late, {} invalid, {} corrections) to {} and a catalog of {} customers to {}",
                s.records,
                s.duplicates,
                s.late,
                s.invalid,
                s.corrections,
                args.out.join("events.jsonl").display(),
                args.customers,
                args.out.join("catalog").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Check { dir },
        } => {
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
        Command::Invoice {
            command:
                InvoiceCommand::Preview {
                    source:
                        InvoiceSource {
                            customer,
                            period,
                            out,
                            clickhouse_url,
                            config,
                        },
                    catalog,
                },
        } => {
            let (cfg, ch) = open_clickhouse(config.as_deref(), clickhouse_url.as_ref())?;
            let catalog = catalog.map(|d| load_dir(&d)).transpose()?;
            // Every period is read (credit balances need the history); --period selects what
            // is shown.
            let load = preview::Filter {
                customer: customer.clone(),
                period: None,
            };
            let show = preview::Filter {
                customer: customer.clone(),
                period,
            };
            let lines = match &ch {
                Some(ch) => preview::from_clickhouse(ch, &load),
                None => preview::from_output(&out, &load),
            }
            .map_err(anyhow::Error::msg)?;
            if !lines.iter().any(|l| show.keeps(l)) {
                if let Some(c) = customer {
                    anyhow::bail!(
                        "no invoice lines for customer `{c}` (check the id and --period)"
                    );
                }
            }
            print!(
                "{}",
                preview::render_lines(lines, catalog.as_ref(), cfg.billing.period, &show)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Shadow {
            command:
                ShadowCommand::Report {
                    source:
                        InvoiceSource {
                            customer,
                            period,
                            out,
                            clickhouse_url,
                            config,
                        },
                },
        } => {
            let (_, ch) = open_clickhouse(config.as_deref(), clickhouse_url.as_ref())?;
            let filter = preview::Filter { customer, period };
            let read = |table: &str| match &ch {
                Some(ch) => preview::table_from_clickhouse(ch, table, &filter),
                None => preview::table_from_output(&out, table, &filter),
            };
            let live = read("invoice_lines").map_err(anyhow::Error::msg)?;
            let shadow = read("shadow_invoice_lines").map_err(anyhow::Error::msg)?;
            print!(
                "{}",
                meterflow::shadow::render(&meterflow::shadow::deltas(&live, &shadow))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Record { dir, actor, log },
        } => {
            load_dir(&dir)?;
            let ch = log.clickhouse()?;
            let store = match &ch {
                Some(ch) => catalog_log::Store::ClickHouse(ch),
                None => catalog_log::Store::File(&log.log),
            };
            let actor = actor.unwrap_or_else(|| {
                catalog_log::actor(&std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
            });
            let rows = catalog_log::record(&dir, &actor, &store).map_err(anyhow::Error::msg)?;
            if rows.is_empty() {
                println!("no changes since the last recorded catalog");
            } else {
                print!("{}", catalog_log::render(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command:
                CatalogCommand::Publish {
                    dir,
                    config,
                    brokers,
                    topic,
                    actor,
                    dry_run,
                },
        } => {
            load_dir(&dir)?;
            let mut cfg = meterflow::config::Config::load(config.as_deref())?;
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
            let actor = actor.unwrap_or_else(|| {
                catalog_log::actor(&std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
            });
            let changes = meterflow::catalog_source::publish(
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
        Command::Catalog {
            command: CatalogCommand::Log { log },
        } => {
            let ch = log.clickhouse()?;
            let store = match &ch {
                Some(ch) => catalog_log::Store::ClickHouse(ch),
                None => catalog_log::Store::File(&log.log),
            };
            print!(
                "{}",
                catalog_log::render(&store.read().map_err(anyhow::Error::msg)?)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace { out, event_id } => {
            print!("{}", trace::trace(&out, &event_id)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn summarize(report: &run::RunReport, out: &std::path::Path) {
    let c = &report.counts;
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
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
