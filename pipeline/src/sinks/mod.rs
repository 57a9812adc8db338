//! Where output goes: CSV tables ([`files`]), ClickHouse ([`clickhouse`]), alerts to on-call
//! ([`alerts`]) and the catalog change log ([`catalog_log`]). Sinks write what the dataflow
//! emits and record progress; they make no billing decisions.

pub mod alerts;
pub mod catalog_log;
pub mod clickhouse;
pub mod files;
