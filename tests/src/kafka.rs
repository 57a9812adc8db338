//! Producing usage records to a real broker the way platforms do: keyed by event id (so retries of
//! one event share a partition), mostly one event per message, some messages carrying an NDJSON
//! batch of events.

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

/// The key of a record: its event id (native `event_id` or CloudEvents `id`), if it parses.
fn key_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("event_id")
        .or_else(|| v.get("id"))
        .and_then(|id| id.as_str())
        .map(str::to_string)
}

/// How records are grouped into messages.
#[derive(Clone, Copy)]
pub struct Batching {
    /// Every `every`-th message carries `size` records as NDJSON (0: never).
    pub every: usize,
    pub size: usize,
}

/// Produces `lines` to `topic` with an idempotent producer and waits until every message is
/// acknowledged. Returns the number of messages sent.
pub fn produce(brokers: &str, topic: &str, lines: &[&str], batching: Batching) -> usize {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Deliveries::default())
        .expect("producer");
    let mut messages = 0;
    let mut i = 0;
    while i < lines.len() {
        let take = if batching.every > 0 && messages % batching.every == batching.every - 1 {
            batching.size.max(1)
        } else {
            1
        };
        let group = &lines[i..(i + take).min(lines.len())];
        let payload = group.join("\n");
        let key = key_of(group[0]);
        loop {
            let mut record = BaseRecord::to(topic).payload(&payload);
            if let Some(k) = &key {
                record = record.key(k.as_str());
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
        messages += 1;
        i += group.len();
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
