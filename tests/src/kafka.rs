//! Producing usage records to a real broker the way platforms do: keyed by customer (so a
//! customer's events, their retries and their corrections stay in order in one partition), mostly
//! one event per message, some messages carrying an NDJSON batch of events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// Counts deliveries the broker refused, so a test can insist there were none.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The key of a record: its customer (native `customer_id` or CloudEvents `subject`), if it parses.
fn key_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("customer_id")
        .or_else(|| v.get("subject"))
        .and_then(|id| id.as_str())
        .map(str::to_string)
}

/// How records are grouped into messages.
#[derive(Clone, Copy)]
pub struct Batching {
    /// Every `every`-th record goes into a per-partition NDJSON batch of up to `size` records
    /// (0: never); the rest are single-event messages.
    pub every: usize,
    pub size: usize,
}

/// FNV-1a: a stable key → partition mapping, the same in every run.
fn partition_of(key: &str, partitions: u32) -> i32 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % partitions as u64) as i32
}

fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    payload: &str,
) {
    loop {
        let mut record = BaseRecord::to(topic).partition(partition).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err((e, _)) => panic!("produce failed: {e}"),
        }
    }
}

/// Produces `lines` to the `partitions` partitions of `topic` with an idempotent producer,
/// keeping each key's records in order, and waits until every message is acknowledged.
/// Returns the number of messages sent.
pub fn produce(
    brokers: &str,
    topic: &str,
    partitions: u32,
    lines: &[&str],
    batching: Batching,
) -> usize {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Deliveries::default())
        .expect("producer");
    // Pending batch per partition: flushed before a single message to the same partition, so
    // order within a partition is the order of `lines`.
    let mut pending: Vec<Vec<&str>> = vec![Vec::new(); partitions as usize];
    let mut messages = 0;
    let flush = |p: usize, pending: &mut Vec<Vec<&str>>, messages: &mut usize| {
        if !pending[p].is_empty() {
            let key = key_of(pending[p][0]);
            send(
                &producer,
                topic,
                p as i32,
                key.as_deref(),
                &pending[p].join("\n"),
            );
            pending[p].clear();
            *messages += 1;
        }
    };
    for (i, line) in lines.iter().enumerate() {
        let key = key_of(line);
        let p = match &key {
            Some(k) => partition_of(k, partitions),
            None => (i % partitions as usize) as i32,
        } as usize;
        if batching.every > 0 && i % batching.every == batching.every - 1 {
            pending[p].push(line);
            if pending[p].len() >= batching.size.max(1) {
                flush(p, &mut pending, &mut messages);
            }
        } else {
            flush(p, &mut pending, &mut messages);
            send(&producer, topic, p as i32, key.as_deref(), line);
            messages += 1;
        }
    }
    for p in 0..partitions as usize {
        flush(p, &mut pending, &mut messages);
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("every message acknowledged");
    assert_eq!(
        producer.context().failed.load(Ordering::Relaxed),
        0,
        "the broker refused messages"
    );
    messages
}
