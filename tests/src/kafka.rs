//! Producing usage records to a real broker the way platforms do: keyed by customer (so a
//! customer's events, their retries and their corrections stay in order in one partition), mostly
//! one event per message, some messages carrying an NDJSON batch of events, optionally with a
//! header on every message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
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

/// The key of a record: its customer (native `customer_id` or CloudEvents `subject`). A plain
/// scan for the quoted field, as producers that build their own JSON do; records without one
/// have no key.
fn key_of(line: &str) -> Option<String> {
    ["\"customer_id\":\"", "\"subject\":\""]
        .iter()
        .find_map(|field| {
            let start = line.find(field)? + field.len();
            let len = line[start..].find('"')?;
            Some(line[start..start + len].to_string())
        })
}

/// The partition [`UsageProducer`] sends a record to (records without a key: round robin).
pub fn partition_of_record(line: &str, partitions: u32) -> Option<i32> {
    key_of(line).map(|k| partition_of(&k, partitions))
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
    header: Option<&(String, String)>,
) {
    loop {
        let mut record = BaseRecord::to(topic).partition(partition).payload(payload);
        if let Some((name, value)) = header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: name,
                value: Some(value),
            }));
        }
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

/// A producer of usage records to the partitions of one topic, keeping each key's records in
/// order: a per-partition pending batch is sent before a single message to the same partition.
pub struct UsageProducer {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    partitions: u32,
    batching: Batching,
    pending: Vec<Vec<String>>,
    records: usize,
    header: Option<(String, String)>,
    /// Messages sent so far.
    pub messages: usize,
}

impl UsageProducer {
    /// An idempotent producer (no duplicates from producer retries).
    pub fn new(brokers: &str, topic: &str, partitions: u32, batching: Batching) -> UsageProducer {
        UsageProducer::with_settings(brokers, topic, partitions, batching, &[])
    }

    /// As [`UsageProducer::new`], with librdkafka `settings` on top (e.g. `compression.type`).
    pub fn with_settings(
        brokers: &str,
        topic: &str,
        partitions: u32,
        batching: Batching,
        settings: &[(&str, &str)],
    ) -> UsageProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
        for (k, v) in settings {
            config.set(*k, *v);
        }
        let producer = config
            .create_with_context(Deliveries::default())
            .expect("producer");
        UsageProducer {
            producer,
            topic: topic.to_string(),
            partitions,
            batching,
            pending: vec![Vec::new(); partitions as usize],
            records: 0,
            header: None,
            messages: 0,
        }
    }

    /// Puts this header on every message.
    pub fn with_header(mut self, name: &str, value: &str) -> UsageProducer {
        self.header = Some((name.to_string(), value.to_string()));
        self
    }

    fn flush_partition(&mut self, p: usize) {
        if self.pending[p].is_empty() {
            return;
        }
        let key = key_of(&self.pending[p][0]);
        let payload = self.pending[p].join("\n");
        send(
            &self.producer,
            &self.topic,
            p as i32,
            key.as_deref(),
            &payload,
            self.header.as_ref(),
        );
        self.pending[p].clear();
        self.messages += 1;
    }

    /// Queues `lines` (batched records may wait for their batch to fill).
    pub fn send_lines(&mut self, lines: &[&str]) {
        for line in lines {
            let i = self.records;
            self.records += 1;
            let key = key_of(line);
            let p = match &key {
                Some(k) => partition_of(k, self.partitions),
                None => (i % self.partitions as usize) as i32,
            } as usize;
            let b = self.batching;
            if b.every > 0 && i % b.every == b.every - 1 {
                self.pending[p].push(line.to_string());
                if self.pending[p].len() >= b.size.max(1) {
                    self.flush_partition(p);
                }
            } else {
                self.flush_partition(p);
                send(
                    &self.producer,
                    &self.topic,
                    p as i32,
                    key.as_deref(),
                    line,
                    self.header.as_ref(),
                );
                self.messages += 1;
            }
        }
    }

    /// Sends every pending batch and waits until every message is acknowledged.
    pub fn flush(&mut self) {
        for p in 0..self.partitions as usize {
            self.flush_partition(p);
        }
        self.producer
            .flush(Duration::from_secs(120))
            .expect("every message acknowledged");
        assert_eq!(
            self.producer.context().failed.load(Ordering::Relaxed),
            0,
            "the broker refused messages"
        );
    }
}

/// Produces `lines` to the `partitions` partitions of `topic` and waits until every message is
/// acknowledged. Returns the number of messages sent.
pub fn produce(
    brokers: &str,
    topic: &str,
    partitions: u32,
    lines: &[&str],
    batching: Batching,
) -> usize {
    let mut producer = UsageProducer::new(brokers, topic, partitions, batching);
    producer.send_lines(lines);
    producer.flush();
    producer.messages
}

/// The consumer group's committed offset and the high watermark of every partition of `topic`.
pub fn group_offsets(brokers: &str, group: &str, topic: &str, partitions: u32) -> Vec<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::TopicPartitionList;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(20))
        .expect("committed offsets");
    let out = (0..partitions as i32)
        .map(|p| {
            let c = committed
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1);
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(20))
                .expect("watermarks");
            (c, high)
        })
        .collect();
    // Lists from the consumer must go before it does (or its shutdown hangs).
    drop(committed);
    out
}
