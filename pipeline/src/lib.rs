//! The meterflow application: the commands of the `meterflow` binary and the I/O behind them.
//! The binary (`main.rs`) only parses the command line and dispatches to [`commands`].
//!
//! Rooms:
//! - [`commands`]: one file per CLI command, each owning its arguments and its `run`.
//! - [`sources`]: what reads input: files and stdin, Kafka topics, the catalog topic.
//! - [`sinks`]: what writes output: CSV files, ClickHouse, alerts, the catalog change log.
//! - [`reports`]: what reads a run's output back (tables, invoice previews).
//! - [`config`]: the typed configuration every command loads.

pub mod commands;
pub mod config;
pub mod reports;
pub mod sinks;
pub mod sources;
