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
use std::ffi::CString;
use std::time::{Duration, Instant};

use meterflow_operators::progress::Progress;
use meterflow_operators::source::{
    Chunk, ChunkReader, MessageSpan, PartitionState, Position, Read,
};
use meterflow_operators::Epoch;
use meterflow_schemas::time::Span;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
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
    /// Consumer group whose committed offsets mirror the durable progress (for lag monitoring;
    /// progress itself is stored with the outputs).
    pub group_id: String,
    /// Where a pipeline with no committed progress starts: `earliest` or `latest`.
    pub start_from: String,
    /// How often each worker closes an epoch.
    pub epoch_interval: Span,
    /// Close an epoch early once this many payload bytes are waiting.
    pub max_epoch_bytes: usize,
    /// Stop once every partition has been at its end for this long (backfills, tests).
    pub exit_when_idle: Option<Span>,
    /// A partition read to its end stops holding back the watermark once nothing has arrived
    /// from it for this long (or since the run started). Until then it holds it at the latest
    /// time read from it, so an event a producer is still writing there is not judged against
    /// another partition's burst. `0s`: a partition stops holding as soon as it is read to its end.
    pub idle_after: Span,
    /// Any librdkafka setting, passed through (`security.protocol`, `sasl.mechanisms`, ...).
    pub settings: BTreeMap<String, String>,
    /// librdkafka settings whose values are secrets: setting name → environment variable.
    pub secret_settings: BTreeMap<String, String>,
    /// librdkafka settings whose values are secrets: setting name → file holding the value.
    pub secret_files: BTreeMap<String, std::path::PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            topics: vec!["usage".into()],
            group_id: "meterflow".into(),
            start_from: "earliest".into(),
            epoch_interval: Span(100),
            max_epoch_bytes: 8 << 20,
            exit_when_idle: None,
            idle_after: Span(10_000),
            settings: BTreeMap::new(),
            secret_settings: BTreeMap::new(),
            secret_files: BTreeMap::new(),
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
            // Every partition with a recorded position starts there (`start_from = "latest"`
            // records each one's end before the first epoch); the others from their beginning.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            // librdkafka stops fetching for every partition of a consumer once its queue holds
            // this many messages (default 100 000). With one small event per message a worker
            // drains that faster than fetches refill it, and waits: 300 000 read a 1M-message
            // backlog 25-50% faster (benchmarks/RESULTS.md, session 25). The queue stays
            // bounded by `queued.max.messages.kbytes` too.
            .set("queued.min.messages", "300000");
        self.pass_through(&mut c)?;
        Ok(c)
    }

    /// A producer's settings: the brokers, idempotent and acknowledged by all replicas, and the
    /// pass-through settings.
    pub fn producer_config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        self.pass_through(&mut c)?;
        Ok(c)
    }

    fn pass_through(&self, c: &mut ClientConfig) -> Result<(), String> {
        for (k, v) in &self.settings {
            c.set(k, v);
        }
        for (k, var) in &self.secret_settings {
            let what = format!("kafka.secret_settings.{k}");
            if let Some(v) = crate::config::secrets::read(&what, Some(var), None)? {
                c.set(k, v);
            }
        }
        for (k, path) in &self.secret_files {
            let what = format!("kafka.secret_files.{k}");
            if let Some(v) = crate::config::secrets::read(&what, None, Some(path))? {
                c.set(k, v);
            }
        }
        Ok(())
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

/// Records what the brokers refused to take (a delivery callback; `flush` alone does not
/// tell).
#[derive(Default)]
pub struct Refusals(std::sync::Mutex<Vec<String>>);

impl Refusals {
    /// The refusals since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl rdkafka::ClientContext for Refusals {}

impl rdkafka::producer::ProducerContext for Refusals {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }
    }
}

/// Hands `record` to `producer`, waiting while the producer's queue is full.
pub fn send_with_room<C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()>>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'_, str, str>,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError::MessageProduction;
    use rdkafka::types::RDKafkaErrorCode::QueueFull;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((MessageProduction(QueueFull), back)) => {
                producer.poll(Duration::from_millis(100));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Produces `records` (key, payload) to `topic` and waits until the brokers acknowledged every
/// one (`acks = all`, idempotent, no delivery timeout): a broker that is down is waited for,
/// saying so every 10 s; a record the brokers refuse is an error.
pub fn publish(kafka: &KafkaConfig, topic: &str, records: &[(String, &str)]) -> Result<(), String> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer<Refusals> = kafka
        .producer_config()?
        .set("message.timeout.ms", "0")
        .create_with_context(Refusals::default())
        .map_err(|e| format!("cannot create a producer for {topic}: {e}"))?;
    for (key, payload) in records {
        let record = BaseRecord::to(topic).key(key.as_str()).payload(*payload);
        send_with_room(&producer, record).map_err(|e| format!("producing to {topic}: {e}"))?;
    }
    while let Err(e) = producer.flush(Duration::from_secs(10)) {
        tracing::warn!(topic, brokers = %kafka.brokers, error = %e, "not yet acknowledged by Kafka; waiting");
    }
    let refused = producer.context().take();
    match refused.first() {
        None => Ok(()),
        Some(e) => Err(format!(
            "{topic}: the brokers refused {} of {} records: {e}",
            refused.len(),
            records.len()
        )),
    }
}

/// Commits the pipeline's durable positions to the consumer group, for lag monitoring only:
/// progress itself lives with the outputs (`sink_progress`), and a failed commit here is logged,
/// never fatal. Commits are asynchronous; the last one is made synchronously at shutdown, waiting
/// at most a few seconds (a broker that is down does not hold up the exit).
pub struct GroupOffsets {
    consumer: Option<BaseConsumer>,
    /// Topic name by source index.
    topics: Vec<String>,
    last: Option<TopicPartitionList>,
}

impl GroupOffsets {
    pub fn new(cfg: &KafkaConfig) -> Result<GroupOffsets, String> {
        let consumer = cfg
            .client_config()?
            .create()
            .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
        Ok(GroupOffsets {
            consumer: Some(consumer),
            topics: cfg.topics.clone(),
            last: None,
        })
    }

    pub fn commit(&mut self, positions: &[Position]) {
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            let Some(topic) = self.topics.get(p.source as usize) else {
                continue;
            };
            if let Err(e) =
                tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.next_offset as i64))
            {
                tracing::warn!(topic, partition = p.partition, error = %e, "cannot list a Kafka offset");
            }
        }
        let Some(consumer) = &self.consumer else {
            return;
        };
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets to the Kafka consumer group failed (monitoring only)");
        }
        self.last = Some(tpl);
    }
}

impl Drop for GroupOffsets {
    fn drop(&mut self) {
        let (Some(consumer), Some(tpl)) = (self.consumer.take(), self.last.take()) else {
            return;
        };
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = consumer.commit(&tpl, CommitMode::Sync);
            drop(tpl);
            let _ = done.send(result);
        });
        match wait.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "final commit to the Kafka consumer group failed (monitoring only)")
            }
            Err(_) => tracing::warn!(
                "final commit to the Kafka consumer group timed out (monitoring only)"
            ),
        }
    }
}

/// One worker's consumer.
pub struct KafkaReader {
    consumer: BaseConsumer,
    /// This worker's partitions: (source index = topic index, partition).
    assigned: Vec<(u32, i32)>,
    topic_index: BTreeMap<String, u32>,
    /// Topic names by source index, for librdkafka calls.
    topic_names: Vec<CString>,
    next_offsets: BTreeMap<(u32, i32), u64>,
    at_end: BTreeSet<(u32, i32)>,
    /// Per partition: its next offset at the last chunk and when a message last came from it
    /// (the reader's start if none has).
    last_seen: BTreeMap<(u32, i32), (Option<u64>, Instant)>,
    /// Partitions idle at the commit this run resumed from, and nothing read from them since:
    /// still idle, as they would be had the run not stopped.
    idle_at_resume: BTreeSet<(u32, i32)>,
    idle_after: Duration,
    epoch: Epoch,
    epoch_started: Instant,
    interval: Duration,
    max_bytes: usize,
    exit_when_idle: Option<Duration>,
    last_message: Instant,
    last_end_check: Instant,
    /// When the source last asked for a chunk: a long gap means flow control held the reader.
    last_asked: Instant,
    last_warning: Option<Instant>,
    bytes: Vec<u8>,
    messages: Vec<MessageSpan>,
    /// Keys and headers of `messages`.
    meta: Vec<u8>,
    done: bool,
    /// Whether a chunk was emitted: the first one names this reader's partitions to the
    /// watermark, and must be emitted even when the reader stops before reading anything.
    reported: bool,
    /// Set by the catalog watcher: emit what is read, then finish (the run drains and resumes
    /// with the new catalog).
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl KafkaReader {
    /// Finishes at the next epoch once `stop` is set.
    pub fn stopping_on(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// `resume`: the commit this run continues from. Its partitions start at their committed
    /// next offsets, others at their beginning (`start_from = "latest"` is a commit: see
    /// [`latest_start`]). A partition idle at the commit stays idle until a message arrives, if
    /// the broker holds nothing past its committed offset now.
    pub fn new(
        cfg: &KafkaConfig,
        all: &[(String, i32)],
        worker: usize,
        workers: usize,
        resume: Option<&Progress>,
    ) -> Result<KafkaReader, String> {
        let first_epoch = resume.map_or(0, |p| p.epoch + 1);
        let resume_at: BTreeMap<(u32, i32), u64> = resume
            .iter()
            .flat_map(|p| &p.positions)
            .map(|pos| ((pos.source, pos.partition), pos.next_offset))
            .collect();
        let idle_at_resume: BTreeSet<(u32, i32)> = resume
            .iter()
            .flat_map(|p| &p.partitions)
            .filter(|p| p.idle)
            .map(|p| (p.source, p.partition))
            .collect();
        // A partition without a position (a new one, or one empty when the pipeline first
        // started from `earliest`) and an offset out of range are read from the beginning: what
        // arrived while the pipeline was down is usage to bill. (`start_from = "latest"` is a
        // commit written before the first epoch: see [`latest_start`].)
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
            let offset = match resume_at.get(&(source, *partition)) {
                Some(&o) => {
                    next_offsets.insert((source, *partition), o);
                    Offset::Offset(o as i64)
                }
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(|e| e.to_string())?;
            assigned.push((source, *partition));
        }
        if !assigned.is_empty() {
            // Know the partitions' leaders before assigning them: a partition assigned while its
            // leader is unknown waits librdkafka's fixed 500 ms before asking again for where to
            // start, so every start and restart read nothing for half a second (B2, session 33).
            // Should the request fail or take more than a second (a broker down at start),
            // librdkafka still finds the leaders, only later.
            for topic in assigned
                .iter()
                .map(|&(source, _)| &cfg.topics[source as usize])
                .collect::<BTreeSet<_>>()
            {
                if let Err(e) = consumer.fetch_metadata(Some(topic), Duration::from_secs(1)) {
                    tracing::debug!(topic, error = %e, "kafka metadata before assigning failed");
                }
            }
            consumer
                .assign(&tpl)
                .map_err(|e| format!("cannot assign Kafka partitions: {e}"))?;
        }
        let last_seen = assigned
            .iter()
            .map(|&p| (p, (next_offsets.get(&p).copied(), Instant::now())))
            .collect();
        // Idle at the commit and nothing arrived since: still idle. A partition that has a
        // backlog now (producers wrote while the pipeline was down, or it exited when idle) holds
        // the watermark until it is read, as any partition with unread messages does; were it
        // still counted idle, the first other partition read would carry the watermark past its
        // backlog, and the backlog's events would be judged late or too old.
        let idle_at_resume = idle_at_resume
            .into_iter()
            .filter(|p| assigned.contains(p))
            .filter(|&(source, partition)| {
                let topic = &cfg.topics[source as usize];
                match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
                    Ok((low, high)) => match next_offsets.get(&(source, partition)) {
                        Some(&next) => next as i64 >= high,
                        None => high <= low,
                    },
                    // Unknown: hold the watermark until the partition is idle again.
                    Err(_) => false,
                }
            })
            .collect();
        Ok(KafkaReader {
            idle_at_resume,
            consumer,
            assigned,
            topic_names: cfg
                .topics
                .iter()
                .map(|t| {
                    CString::new(t.as_str())
                        .map_err(|_| format!("kafka topic `{t}` contains a NUL byte"))
                })
                .collect::<Result<_, _>>()?,
            topic_index,
            last_seen,
            next_offsets,
            at_end: BTreeSet::new(),
            idle_after: Duration::from_millis(cfg.idle_after.millis().max(0) as u64),
            epoch: first_epoch,
            epoch_started: Instant::now(),
            interval: Duration::from_millis(cfg.epoch_interval.millis().max(1) as u64),
            max_bytes: cfg.max_epoch_bytes,
            exit_when_idle: cfg
                .exit_when_idle
                .map(|s| Duration::from_millis(s.millis().max(0) as u64)),
            last_message: Instant::now(),
            last_end_check: Instant::now(),
            last_asked: Instant::now(),
            last_warning: None,
            bytes: Vec::new(),
            messages: Vec::new(),
            meta: Vec::new(),
            done: false,
            reported: false,
            stop: None,
        })
    }

    /// Takes what librdkafka has ready, without waiting.
    fn poll_ready(&mut self) {
        let before = self.messages.len();
        self.take_ready();
        if self.messages.len() != before {
            // Once per poll, not per message: reading the clock was 1% of a busy reader.
            self.last_message = Instant::now();
        }
    }

    fn take_ready(&mut self) {
        for _ in 0..10_000 {
            match self.consumer.poll(Duration::ZERO) {
                None => return,
                Some(Ok(m)) => {
                    let Some(&source) = self.topic_index.get(m.topic()) else {
                        continue;
                    };
                    let payload = m.payload().unwrap_or_default();
                    let offset = m.offset().max(0) as u64;
                    let meta_start = self.meta.len();
                    let key = m.key().unwrap_or_default();
                    self.meta.extend_from_slice(key);
                    if let Some(headers) = m.headers() {
                        let map: BTreeMap<&str, String> = headers
                            .iter()
                            .map(|h| {
                                let value = h.value.map(String::from_utf8_lossy);
                                (h.key, value.map(|v| v.into_owned()).unwrap_or_default())
                            })
                            .collect();
                        let _ = serde_json::to_writer(&mut self.meta, &map);
                    }
                    self.messages.push(MessageSpan {
                        start: self.bytes.len() as u32,
                        len: payload.len() as u32,
                        source,
                        partition: m.partition(),
                        offset,
                        meta_start: meta_start as u32,
                        key_len: key.len() as u32,
                        headers_len: (self.meta.len() - meta_start - key.len()) as u32,
                    });
                    self.bytes.extend_from_slice(payload);
                    self.next_offsets
                        .insert((source, m.partition()), offset + 1);
                    self.at_end.remove(&(source, m.partition()));
                    if self.bytes.len() >= self.max_bytes {
                        return;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // The event names no topic: use it only when the partition number is unique.
                    let mut matching = self.assigned.iter().filter(|(_, part)| *part == p);
                    if let (Some(&key), None) = (matching.next(), matching.next()) {
                        self.at_end.insert(key);
                    }
                }
                Some(Err(e)) => {
                    // Trouble with the broker is not idleness: the quiet period restarts, and
                    // an end seen before it proves nothing about now.
                    self.last_message = Instant::now();
                    self.at_end.clear();
                    if self
                        .last_warning
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                    {
                        tracing::warn!(error = %e, "kafka poll failed; librdkafka reconnects and retries");
                        self.last_warning = Some(Instant::now());
                    }
                    return;
                }
            }
        }
    }

    /// After the reader was held back (its outputs were not durable, e.g. ClickHouse stopped),
    /// time spent not reading is not time idle: messages that arrived meanwhile wait unread, and
    /// an end seen before proves nothing about now. Every partition's quiet period, and the
    /// exit-when-idle one, start again.
    fn restart_quiet_clocks(&mut self) {
        let now = Instant::now();
        for seen in self.last_seen.values_mut() {
            seen.1 = now;
        }
        self.last_message = now;
        self.at_end.clear();
    }

    /// Whether the partition no longer holds back the watermark: read to its end and idle for
    /// `idle_after`. Called once per chunk, after its messages were read.
    fn idle(&mut self, source: u32, partition: i32) -> bool {
        let next = self.next_offsets.get(&(source, partition)).copied();
        let seen = self
            .last_seen
            .entry((source, partition))
            .or_insert((next, Instant::now()));
        if seen.0 != next {
            *seen = (next, Instant::now());
            self.idle_at_resume.remove(&(source, partition));
        }
        if self.idle_at_resume.contains(&(source, partition)) {
            return true;
        }
        seen.1.elapsed() >= self.idle_after && self.caught_up(source, partition)
    }

    /// Whether everything the broker held for the partition, as of librdkafka's last fetch
    /// response, has been read (no network round trip).
    fn caught_up(&self, source: u32, partition: i32) -> bool {
        if self.at_end.contains(&(source, partition)) {
            return true;
        }
        let Some(&next) = self.next_offsets.get(&(source, partition)) else {
            return false;
        };
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the consumer's handle is alive for the call, the topic name is a valid C
        // string, and librdkafka only writes the two offsets.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                self.topic_names[source as usize].as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            && high >= 0
            && next as i64 >= high
    }

    /// True once nothing arrived for `exit_when_idle` and every partition is read to its end, as
    /// the broker says now: a broker that is down is never "at the end", so an outage does not
    /// end a backfill early.
    fn idle_at_end(&mut self) -> bool {
        let Some(idle) = self.exit_when_idle else {
            return false;
        };
        if self.last_message.elapsed() < idle
            || self.last_end_check.elapsed() < Duration::from_millis(250)
        {
            return false;
        }
        self.last_end_check = Instant::now();
        let names: BTreeMap<u32, &String> = self.topic_index.iter().map(|(t, &i)| (i, t)).collect();
        let mut unreachable = false;
        let at_end = self.assigned.iter().all(|&(source, partition)| {
            let Ok((low, high)) =
                self.consumer
                    .fetch_watermarks(names[&source], partition, Duration::from_secs(2))
            else {
                unreachable = true;
                return false;
            };
            // A partition ending in transaction markers never reaches its high watermark; the
            // end-of-partition event covers it.
            self.at_end.contains(&(source, partition))
                || match self.next_offsets.get(&(source, partition)) {
                    Some(&next) => next as i64 >= high,
                    // Never read and no position: started at its beginning (`latest` records
                    // the end it started at as a position).
                    None => high <= low,
                }
        });
        if unreachable {
            self.last_message = Instant::now();
            self.at_end.clear();
        }
        if at_end {
            tracing::info!(
                partitions = self.assigned.len(),
                idle_ms = idle.as_millis() as u64,
                "every partition read to its end and idle; finishing"
            );
        }
        at_end
    }
}

/// Where a pipeline with no committed progress starts under `start_from = "latest"`: the commit
/// of an empty epoch 0, each of `all`'s partitions positioned at its end now. The run resumes
/// from it as from any commit, and with ClickHouse it is recorded before anything is read: a
/// first run killed before its own first commit restarts from these positions, not from the
/// end as it is then, which would skip what arrived in between. Every later commit names every
/// partition, so no restart reads the history `latest` was chosen to skip.
pub fn latest_start(cfg: &KafkaConfig, all: &[(String, i32)]) -> Result<Progress, String> {
    let consumer: BaseConsumer = cfg
        .client_config()?
        .create()
        .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
    let mut positions = Vec::with_capacity(all.len());
    for (topic, partition) in all {
        let source = cfg
            .topics
            .iter()
            .position(|t| t == topic)
            .ok_or_else(|| format!("Kafka topic `{topic}` is not in kafka.topics"))?
            as u32;
        positions.push(Position {
            source,
            partition: *partition,
            next_offset: end_offset(&consumer, topic, *partition)?,
            check: 0,
        });
    }
    Ok(Progress {
        epoch: 0,
        watermark: None,
        partitions: Vec::new(),
        positions,
        counts: Default::default(),
        lag: Vec::new(),
    })
}

/// The offset a partition's next message will get (its high watermark), asked of the broker.
/// A broker that does not answer is asked again with backoff, for about a minute, before the
/// start fails: nothing has been read yet, so nothing is lost.
fn end_offset(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<u64, String> {
    const ATTEMPTS: u32 = 6;
    let mut pause = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok((_, high)) => return Ok(high.max(0) as u64),
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(topic, partition, error = %e, attempt, "kafka.start_from = \"latest\": cannot ask the broker where the partition ends; retrying");
                std::thread::sleep(pause);
                pause *= 2;
                attempt += 1;
            }
            Err(e) => {
                return Err(format!(
                    "kafka.start_from = \"latest\": the broker did not say where {topic} partition {partition} ends ({e}); check kafka.brokers and that the broker is up, then start again (nothing was read)"
                ))
            }
        }
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
        if self.last_asked.elapsed() >= Duration::from_secs(1) {
            self.restart_quiet_clocks();
        }
        self.last_asked = Instant::now();
        let stopping = self.stopping();
        if !stopping {
            self.poll_ready();
        }
        let idle = !stopping && self.idle_at_end();
        if self.epoch_started.elapsed() < self.interval
            && self.bytes.len() < self.max_bytes
            && !idle
            && !stopping
        {
            return Read::Pending;
        }
        // A reader stopped with nothing read ends without another chunk, unless it never
        // emitted one: its partitions would then be unknown to the watermark, which the other
        // readers' partitions alone would carry past them; the commit would record that
        // watermark, and after the restart this reader's first events would be judged late or
        // too old against it (an uninterrupted run holds the watermark for them).
        if stopping && self.bytes.is_empty() && self.reported {
            self.done = true;
            return Read::Done;
        }
        // What was read is emitted; what librdkafka fetched beyond it is read again after
        // the switch, from the committed positions. A reader finishing because everything is
        // idle says so in its last chunk, so the watermark reaches the latest time read.
        self.done = stopping || idle;
        buf.clear();
        std::mem::swap(&mut buf, &mut self.bytes);
        let positions = self
            .next_offsets
            .iter()
            .map(|(&(source, partition), &next_offset)| Position {
                source,
                partition,
                next_offset,
                check: 0,
            })
            .collect();
        let assigned = self.assigned.clone();
        let partitions = assigned
            .into_iter()
            .map(|(source, partition)| PartitionState {
                source,
                partition,
                idle: idle || self.idle(source, partition),
            })
            .collect();
        // The next chunk starts at this one's size rather than growing from nothing.
        let (messages, meta) = (self.messages.capacity(), self.meta.capacity());
        let messages = std::mem::replace(&mut self.messages, Vec::with_capacity(messages));
        let meta = std::mem::replace(&mut self.meta, Vec::with_capacity(meta));
        let chunk = Chunk {
            epoch: self.epoch,
            source: 0,
            base_offset: 0,
            bytes: buf,
            messages,
            meta,
            positions,
            partitions,
        };
        self.epoch += 1;
        self.epoch_started = Instant::now();
        self.reported = true;
        Read::Chunk(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn reader(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        worker: usize,
    ) -> (KafkaReader, Arc<AtomicBool>) {
        let cfg = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            // Long enough that no chunk is cut by time while the test runs.
            epoch_interval: Span(60_000),
            ..KafkaConfig::default()
        };
        let all = [("usage".to_string(), 0), ("usage".to_string(), 1)];
        let stop = Arc::new(AtomicBool::new(false));
        let reader = KafkaReader::new(&cfg, &all, worker, 2, None)
            .unwrap()
            .stopping_on(stop.clone());
        (reader, stop)
    }

    fn chunk(read: Read) -> Chunk {
        match read {
            Read::Chunk(c) => c,
            Read::Pending => panic!("pending"),
            Read::Done => panic!("done"),
            Read::Failed(e) => panic!("failed: {e}"),
        }
    }

    #[test]
    fn a_reader_stopped_before_its_first_chunk_still_names_its_partitions() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("usage", 2, 1).unwrap();
        let (mut reader, stop) = reader(&cluster, 1);
        assert!(matches!(reader.next_chunk(Vec::new()), Read::Pending));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Its first and last chunk, at the run's first epoch: nothing read, its partition not
        // idle, so the watermark waits for it (in this run and, through the commit, the next).
        let last = chunk(reader.next_chunk(Vec::new()));
        assert_eq!(last.epoch, 0);
        assert!(last.bytes.is_empty() && last.positions.is_empty());
        assert_eq!(
            last.partitions,
            [PartitionState {
                source: 0,
                partition: 1,
                idle: false
            }]
        );
        assert!(matches!(reader.next_chunk(Vec::new()), Read::Done));
        assert_eq!(reader.peek_epoch(), None);
    }

    #[test]
    fn a_reader_stopped_with_nothing_new_after_a_chunk_ends_without_another() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("usage", 2, 1).unwrap();
        let (mut reader, stop) = reader(&cluster, 0);
        reader.epoch_started -= Duration::from_secs(120);
        let first = chunk(reader.next_chunk(Vec::new()));
        assert_eq!((first.epoch, first.partitions.len()), (0, 1));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(reader.next_chunk(Vec::new()), Read::Done));
        assert_eq!(reader.peek_epoch(), None);
    }
}
