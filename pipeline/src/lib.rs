//! The meterflow application: configuration, file sources and sinks, the `run`, `demo`, `gen`
//! and `trace` commands. The binary (`main.rs`) is a thin command-line layer over this library.

pub mod alerts;
pub mod catalog_log;
pub mod catalog_source;
pub mod clickhouse_client;
pub mod clickhouse_migrate;
pub mod clickhouse_restore;
pub mod clickhouse_sink;
pub mod config;
pub mod demo;
pub mod file_sink;
pub mod file_source;
pub mod gen;
pub mod kafka_source;
pub mod preview;
pub mod run;
pub mod shadow;
pub mod tables;
pub mod trace;
