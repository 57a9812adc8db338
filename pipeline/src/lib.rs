//! The meterflow application: the commands of the `meterflow` binary and the I/O behind them.
//! The binary (`main.rs`) only parses the command line and dispatches to [`commands`].
//!
//! Rooms:
//! - [`commands`]: one file per CLI command, each owning its arguments and its `run`.
//! - [`sources`]: what reads input: files and stdin, Kafka topics, the catalog topic.
//! - [`sinks`]: what writes output: CSV files, ClickHouse, alerts, the catalog change log.
//! - [`reports`]: what reads a run's output back (tables, invoice previews).
//! - [`config`]: the typed configuration every command loads.

/// Writes a line to stderr like `eprintln!`, but never panics. `eprintln!` panics when stderr
/// is closed (whatever read the logs went away: a supervisor's pipe, a restarted collector);
/// on the thread about to stop the process (a signal, a cluster that did not form, a lost
/// peer) that panic left the process running for ever, deaf to SIGTERM. A run whose logs
/// cannot be written still bills, and still stops when it must.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod commands;
pub mod config;
pub mod reports;
pub mod sinks;
pub mod sources;
