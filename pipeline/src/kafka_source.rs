//! The Kafka source: consumes the usage topics with rdkafka and cuts them into epochs.
//!
//! Partitions are assigned statically and deterministically: the (topic, partition) pairs,
//! sorted, are dealt to the timely workers of all processes in turn. A worker with no partitions
//! finishes at once, so it never holds back the frontier or the watermark. Each worker polls
//! without blocking and emits one chunk per `epoch_interval` (or sooner, once `max_epoch_bytes`
//! are waiting). A chunk records the next offset of every partition the worker reads; those
//! positions are committed to ClickHouse with the outputs they produced. A restart seeks to the
//! committed positions, so Kafka's own group offsets are not needed for correctness.
//!
//! A message may hold one event, newline-delimited events, or a JSON array of events (decode
//! splits them). The topic, partition and offset of every event end up on `usage_events` and
//! `rejections`. Broker outages are retried inside librdkafka: polls keep going, nothing is
//! dropped, and the pipeline waits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meterflow_operators::source::{Chunk, ChunkReader, MessageSpan, Position, Read};
use meterflow_operators::Epoch;
use meterflow_schemas::time::Span;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;

/// `[kafka]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`. Empty: no Kafka input.
    pub brokers: String,
    /// Usage topics to consume.
    pub topics: Vec<String>,
    /// Consumer group (for monitoring; progress itself is stored with the outputs).
    pub group_id: String,
    /// Where a pipeline with no committed progress starts: `earliest` or `latest`.
    pub start_from: String,
    /// How often each worker closes an epoch.
    pub epoch_interval: Span,
    /// Close an epoch early once this many payload bytes are waiting.
    pub max_epoch_bytes: usize,
    /// Stop once every partition has been at its end for this long (backfills, tests).
    pub exit_when_idle: Option<Span>,
    /// Any librdkafka setting, passed through (`security.protocol`, `sasl.mechanisms`, ...).
    pub settings: BTreeMap<String, String>,
    /// librdkafka settings whose values are secrets: setting name → environment variable.
    pub secret_settings: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topics: vec!["usage".into()],
            group_id: "meterflow".into(),
            start_from: "earliest".into(),
            epoch_interval: Span(200),
            max_epoch_bytes: 8 << 20,
            exit_when_idle: None,
            settings: BTreeMap::new(),
            secret_settings: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.is_empty()
    }

    /// The librdkafka client settings (secrets resolved from the environment).
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", &self.start_from)
            .set("fetch.wait.max.ms", "10");
        for (k, v) in &self.settings {
            c.set(k, v);
        }
        for (k, var) in &self.secret_settings {
            let v = std::env::var(var).map_err(|_| format!("kafka.secret_settings.{k} names {var}, which is not set; export it before starting meterflow"))?;
            c.set(k, v);
        }
        Ok(c)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.topics.is_empty() {
            return Err("kafka.topics is empty; list the usage topics to consume".into());
        }
        if !matches!(self.start_from.as_str(), "earliest" | "latest") {
            return Err(format!(
                "kafka.start_from `{}` must be earliest or latest",
                self.start_from
            ));
        }
        Ok(())
    }
}

/// The (topic, partition) pairs of the topics, sorted: the order partitions are dealt in.
pub fn partitions(cfg: &KafkaConfig) -> Result<Vec<(String, i32)>, String> {
    let consumer: BaseConsumer = cfg
        .client_config()?
        .create()
        .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
    let mut out = Vec::new();
    for topic in &cfg.topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => {
                    let parts: Vec<i32> = md
                        .topics()
                        .iter()
                        .filter(|t| t.name() == topic)
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !parts.is_empty() {
                        out.extend(parts.into_iter().map(|p| (topic.clone(), p)));
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "Kafka topic `{topic}` has no partitions (does it exist?)"
                        ));
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "cannot read metadata of topic `{topic}` from {}: {e}",
                        cfg.brokers
                    ))
                }
                Err(e) => tracing::warn!(topic, error = %e, "kafka metadata unavailable; retrying"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    out.sort();
    Ok(out)
}

/// One worker's consumer.
pub struct KafkaReader {
    consumer: BaseConsumer,
    /// This worker's partitions: (source index = topic index, partition).
    assigned: Vec<(u32, i32)>,
    topic_index: BTreeMap<String, u32>,
    next_offsets: BTreeMap<(u32, i32), u64>,
    at_end: BTreeSet<(u32, i32)>,
    epoch: Epoch,
    epoch_started: Instant,
    interval: Duration,
    max_bytes: usize,
    exit_when_idle: Option<Duration>,
    last_message: Instant,
    bytes: Vec<u8>,
    messages: Vec<MessageSpan>,
    done: bool,
}

impl KafkaReader {
    /// `resume`: committed next offsets by (topic index, partition); others start per `start_from`.
    pub fn new(
        cfg: &KafkaConfig,
        all: &[(String, i32)],
        worker: usize,
        workers: usize,
        first_epoch: Epoch,
        resume: &BTreeMap<(u32, i32), u64>,
    ) -> Result<KafkaReader, String> {
        let consumer: BaseConsumer = cfg
            .client_config()?
            .create()
            .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
        let topic_index: BTreeMap<String, u32> = cfg
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut assigned = Vec::new();
        let mut next_offsets = BTreeMap::new();
        for (i, (topic, partition)) in all.iter().enumerate() {
            if i % workers != worker {
                continue;
            }
            let source = topic_index[topic];
            let offset = match resume.get(&(source, *partition)) {
                Some(&o) => {
                    next_offsets.insert((source, *partition), o);
                    Offset::Offset(o as i64)
                }
                None if cfg.start_from == "latest" => Offset::End,
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(|e| e.to_string())?;
            assigned.push((source, *partition));
        }
        if !assigned.is_empty() {
            consumer
                .assign(&tpl)
                .map_err(|e| format!("cannot assign Kafka partitions: {e}"))?;
        }
        Ok(KafkaReader {
            consumer,
            assigned,
            topic_index,
            next_offsets,
            at_end: BTreeSet::new(),
            epoch: first_epoch,
            epoch_started: Instant::now(),
            interval: Duration::from_millis(cfg.epoch_interval.millis().max(1) as u64),
            max_bytes: cfg.max_epoch_bytes,
            exit_when_idle: cfg
                .exit_when_idle
                .map(|s| Duration::from_millis(s.millis().max(0) as u64)),
            last_message: Instant::now(),
            bytes: Vec::new(),
            messages: Vec::new(),
            done: false,
        })
    }

    /// Takes what librdkafka has ready, without waiting.
    fn poll_ready(&mut self) {
        for _ in 0..10_000 {
            match self.consumer.poll(Duration::ZERO) {
                None => return,
                Some(Ok(m)) => {
                    let Some(&source) = self.topic_index.get(m.topic()) else {
                        continue;
                    };
                    let payload = m.payload().unwrap_or_default();
                    let offset = m.offset().max(0) as u64;
                    self.messages.push(MessageSpan {
                        start: self.bytes.len() as u32,
                        len: payload.len() as u32,
                        source,
                        partition: m.partition(),
                        offset,
                    });
                    self.bytes.extend_from_slice(payload);
                    self.next_offsets
                        .insert((source, m.partition()), offset + 1);
                    self.at_end.remove(&(source, m.partition()));
                    self.last_message = Instant::now();
                    if self.bytes.len() >= self.max_bytes {
                        return;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(&(source, partition)) =
                        self.assigned.iter().find(|(_, part)| *part == p)
                    {
                        self.at_end.insert((source, partition));
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll failed; librdkafka retries");
                    return;
                }
            }
        }
    }

    fn idle_at_end(&self) -> bool {
        self.exit_when_idle.is_some_and(|idle| {
            self.at_end.len() == self.assigned.len() && self.last_message.elapsed() >= idle
        })
    }
}

impl ChunkReader for KafkaReader {
    fn peek_epoch(&mut self) -> Option<Epoch> {
        (!self.done && !self.assigned.is_empty()).then_some(self.epoch)
    }

    fn next_chunk(&mut self, mut buf: Vec<u8>) -> Read {
        if self.done || self.assigned.is_empty() {
            return Read::Done;
        }
        self.poll_ready();
        let idle = self.idle_at_end();
        if self.epoch_started.elapsed() < self.interval
            && self.bytes.len() < self.max_bytes
            && !idle
        {
            return Read::Pending;
        }
        if idle && self.bytes.is_empty() {
            self.done = true;
            return Read::Done;
        }
        buf.clear();
        std::mem::swap(&mut buf, &mut self.bytes);
        let positions = self
            .next_offsets
            .iter()
            .map(|(&(source, partition), &next_offset)| Position {
                source,
                partition,
                next_offset,
            })
            .collect();
        let chunk = Chunk {
            epoch: self.epoch,
            source: 0,
            base_offset: 0,
            bytes: buf,
            messages: std::mem::take(&mut self.messages),
            positions,
        };
        self.epoch += 1;
        self.epoch_started = Instant::now();
        Read::Chunk(chunk)
    }
}
