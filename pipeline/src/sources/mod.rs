//! Where input comes from: newline-delimited files and stdin ([`files`]), Kafka topics
//! ([`kafka`]), and the compacted catalog topic running pipelines switch catalogs from
//! ([`catalog_topic`]). Sources hand the dataflow chunks of bytes with their positions; they do
//! not decode events (that is the dataflow's `decode`) and write nothing but consumer offsets.
//! [`shutdown`] turns SIGTERM and SIGINT into a stop at a committed point.

pub mod catalog_topic;
pub mod files;
pub mod kafka;
pub mod shutdown;
