//! ClickHouse: the HTTP client ([`client`]), migrations ([`migrate`]), the table writers
//! ([`sink`]), committed progress ([`progress`]) and the restart that resumes from it
//! ([`restore`]).

pub mod client;
pub mod derived;
pub mod migrate;
pub mod progress;
pub mod restore;
pub mod sink;
