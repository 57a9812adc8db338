//! The `meterflow` command line: parses the arguments and dispatches to the command (one file
//! per command under `pipeline/src/commands/`), and maps errors to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meterflow::commands::catalog::CatalogCommand;
use meterflow::commands::dashboard::DashboardCommand;
use meterflow::commands::demo::DemoCommand;
use meterflow::commands::export::ExportCommand;
use meterflow::commands::forecast::ForecastCommand;
use meterflow::commands::gen::{self, GenArgs};
use meterflow::commands::invoice::InvoiceCommand;
use meterflow::commands::migrate::MigrateCommand;
use meterflow::commands::quarantine::QuarantineCommand;
use meterflow::commands::reconcile::ReconcileCommand;
use meterflow::commands::revenue::RevenueCommand;
use meterflow::commands::run::RunCommand;
use meterflow::commands::scorecard::ScorecardCommand;
use meterflow::commands::shadow::ShadowCommand;
use meterflow::commands::trace::TraceCommand;
use meterflow::config::ConfigError;
use meterflow_schemas::catalog::CatalogErrors;

/// mimalloc instead of glibc malloc: per-batch and per-key allocations on the worker threads
/// were ~12% of `run` in the B1 profile (benchmarks/RESULTS.md, session 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's own option setter (`mimalloc.h`), linked in with the allocator.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in `mimalloc.h`'s `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Memory freed for more than 1 s goes back to the OS (mimalloc's default is 10 ms). Each
/// pricing round builds and drops its hash tables, so with 10 ms the same memory went back to
/// the OS and was faulted in again, zeroed, every round: 13% of `run -w 1` on B1 was the kernel
/// clearing (huge) pages. With 1 s: −13% wall time on B1 `-w 1`, −10% on `-w 2`, the same peak
/// RSS (benchmarks/RESULTS.md, session 22). An environment's `MIMALLOC_PURGE_DELAY` still wins.
///
/// No transparent huge pages for the process either: mimalloc asks for them on its arenas, and
/// a purge of part of one, faulted back in, had the kernel zero a whole 2 MiB page again. That
/// was still 13% of `run -w 1` (session 32, twice the system time); without: −11% wall time on
/// B1 `-w 1`, −7% on `-w 2`, 10% less peak RSS. `MIMALLOC_ALLOW_THP=1` keeps them.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists (the setter is
        // not thread safe); the option id and value are plain integers.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a plain prctl on this process. It fails only on kernels without it (before
        // 3.15), where huge pages stay as they were.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

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
    Run(RunCommand),
    /// Generate a realistic sample, run it, and show the invoice preview and where every record went.
    Demo(DemoCommand),
    /// Write synthetic events and a matching catalog for benchmarks.
    Gen(GenArgs),
    /// Create or upgrade meterflow's ClickHouse database and tables.
    Migrate(MigrateCommand),
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
    Trace(TraceCommand),
    /// Recompute every usage invoice line from the accepted events and report drift (exit 3).
    Reconcile(ReconcileCommand),
    /// Capture rate (metered usage billed, the gap by cause) and invoice error rate.
    Scorecard(ScorecardCommand),
    /// Marketplace metering requests (AWS, Azure, GCP) for a closed period's usage of contracts
    /// sold through a marketplace.
    Export(ExportCommand),
    /// The revenue schedule (ASC 606 / IFRS 15): billed, recognised, deferred and unbilled per
    /// contract, performance obligation and period.
    Revenue(RevenueCommand),
    /// The revenue forecast: contracted and usage revenue for the next months, with an 80%
    /// interval; `--backtest N` measures it on the last N closed months.
    Forecast(ForecastCommand),
    /// Exec, account and ops dashboards as web pages (and JSON), over a run's output or ClickHouse.
    Dashboard(DashboardCommand),
    /// Rejected records: list them by reason, replay their fixes.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METERFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written is dropped. Reporting it, as the subscriber does by
        // default, panics on a closed stderr: see `meterflow::say!`.
        .log_internal_errors(false)
        // Colours for a terminal only: log files and collectors get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_target(false)
        .init();
    stop_when_a_peer_is_lost();
    match dispatch(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            meterflow::say!("error: {e:#}");
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
            meterflow::say!(
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
        Command::Run(c) => c.execute(),
        Command::Demo(c) => c.execute(),
        Command::Gen(args) => gen::execute(args),
        Command::Migrate(c) => c.execute(),
        Command::Catalog { command } => command.execute(),
        Command::Invoice { command } => command.execute(),
        Command::Shadow { command } => command.execute(),
        Command::Trace(c) => c.execute(),
        Command::Reconcile(c) => c.execute(),
        Command::Scorecard(c) => c.execute(),
        Command::Quarantine { command } => command.execute(),
        Command::Dashboard(c) => c.execute(),
        Command::Export(c) => c.execute(),
        Command::Revenue(c) => c.execute(),
        Command::Forecast(c) => c.execute(),
    }
}
