//! Lineage: where a record came from (input, partition, offset, record within a batched
//! message) and, for Kafka, its message's key and headers. Every accepted event, rejection and
//! duplicate carries it, so any number can be traced back to the records behind it.

use serde::{Deserialize, Serialize};

/// Where a record came from: a file (by index in the run's inputs) and byte offset, or a Kafka
/// topic (by index), partition and offset. `record` numbers the events of a batched message.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Lineage {
    pub source: u32,
    pub partition: i32,
    pub offset: u64,
    pub record: u32,
}

/// A Kafka message's key (lossy UTF-8) and headers (a JSON object of name → value).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KafkaMeta {
    pub key: String,
    pub headers: String,
}
