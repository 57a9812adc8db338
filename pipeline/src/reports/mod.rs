//! Reading a run's output back, from its CSV tables or from ClickHouse: the tables themselves
//! ([`tables`]) and draft invoices ([`invoice_preview`]). Read-only.

pub mod invoice_preview;
pub mod tables;
