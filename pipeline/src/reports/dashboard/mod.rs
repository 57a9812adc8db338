//! What `meterflow dashboard` shows: the exec, account and ops views, computed from one
//! snapshot of a run's output ([`Facts`]) read from its CSV tables or from ClickHouse.
//!
//! Every number has one definition, shared by both sources: the invoice money and the capture
//! come from the same readers as `meterflow invoice` and `meterflow scorecard`; the rest from
//! the tables as the `v_*` views in ClickHouse define them (migrations 31-42, listed in
//! docs/dashboard.md), which the dashboard queries when it reads ClickHouse. Amounts are exact
//! decimals, sent as text; the pages only turn them into floats to draw charts.

mod credits;
mod facts;
mod reconciled;
mod views;

pub use credits::*;
pub use facts::*;
pub use reconciled::*;
pub use views::*;
