//! What a run reports ([`run_report`]: counts, the progress and summary lines), and reading a
//! run's output back, from its CSV tables or from ClickHouse: the tables themselves ([`tables`])
//! and draft invoices ([`invoice_preview`]). Read-only.

pub mod invoice_preview;
pub mod run_report;
pub mod tables;
