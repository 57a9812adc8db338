//! meterflow's plain data types: the usage event contract and its validation, the catalog
//! (contracts and versioned rate cards), pricing math, rejections and output rows.
//!
//! No dataflow and no I/O here: everything is a pure function of its inputs, so it is unit-tested
//! directly and shared by the dataflow (`meterflow-operators`), the binary and the benchmark baseline.

pub mod anomaly;
pub mod canonical;
pub mod catalog;
pub mod ddl;
pub mod entitlement;
pub mod event;
#[doc(hidden)]
pub mod fixtures;
pub mod forecast;
pub mod hashing;
pub mod ids;
pub mod lag;
pub mod lineage;
pub mod marketplace;
pub mod money;
pub mod pricing;
pub mod quarantine;
pub mod reconcile;
pub mod rejection;
pub mod revenue;
pub mod rows;
pub mod scorecard;
pub mod tables;
pub mod time;
pub mod validate;
pub mod wire;
