//! What a run reports ([`run_report`]: counts, the progress and summary lines), and reading a
//! run's output back, from its CSV tables or from ClickHouse: the tables themselves ([`tables`])
//! draft invoices ([`invoice_preview`]) and what reconciliation compares ([`reconcile`]).
//! Read-only.

pub mod dashboard;
pub mod invoice_preview;
pub mod net_usage;
pub mod quarantine;
pub mod reconcile;
pub mod run_report;
pub mod scorecard;
pub mod tables;
