//! Where a pipeline's catalog comes from, and how a change reaches a running pipeline.
//!
//! A catalog is read from a directory of TOML files, or from a compacted Kafka topic that
//! `meterflow catalog publish` fills. On the topic, every catalog entry (a customer, a contract,
//! one version of a rate card, a tax, a SKU, a catalog setting) is one message keyed
//! `entity/id/version`, whose value is the entry as JSON; an entry a publish removes gets a
//! tombstone. A publish ends with a `_published` marker naming who published and a digest of the
//! whole catalog. A reader applies only what a marker vouches for (the entries it has read hash
//! to the marker's digest), so a half-written publish, or two publishers interleaving, never
//! reaches billing. Compaction keeps the latest message per key, which is exactly that state.
//!
//! The topic has one partition, so a publish is read in the order it was written.
//!
//! A running pipeline with ClickHouse output watches its catalog source (see [`Watcher`]). When
//! the catalog changes and the new one is valid, the Kafka readers stop at their next epoch, the
//! dataflow drains and commits, and `meterflow run` resumes from the commit with the new catalog
//! (re-rating billed usage it prices differently; see `sinks::clickhouse::restore`). Every worker switches
//! at the same committed point. A new catalog that does not load is refused with its problems in
//! the log, and billing goes on with the catalog it has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterflow_schemas::catalog::{from_toml_str, load_dir, Catalog};
use meterflow_schemas::hashing::fingerprint;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Value};

use crate::sinks::catalog_log::{entries, EntryKey};
use crate::sources::kafka::KafkaConfig;

/// The key of the marker that closes a publish.
const MARKER: &str = "_published";

/// A catalog as entries, with who put it there.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub entries: BTreeMap<EntryKey, Value>,
    /// Who published it (topic), or `None` for a directory.
    pub actor: Option<String>,
}

/// Where the catalog comes from.
#[derive(Clone, Debug)]
pub enum CatalogSource {
    Dir(PathBuf),
    /// The compacted topic; the directory is used until the topic holds a publish.
    Topic {
        kafka: Box<KafkaConfig>,
        topic: String,
        dir: PathBuf,
    },
}

impl CatalogSource {
    pub fn new(dir: &Path, kafka: &KafkaConfig, topic: &str) -> CatalogSource {
        if topic.is_empty() || kafka.brokers.is_empty() {
            CatalogSource::Dir(dir.to_path_buf())
        } else {
            CatalogSource::Topic {
                kafka: Box::new(kafka.clone()),
                topic: topic.to_string(),
                dir: dir.to_path_buf(),
            }
        }
    }

    /// The catalog's entries as they stand now.
    pub fn snapshot(&self) -> Result<Snapshot, String> {
        match self {
            CatalogSource::Dir(dir) => Ok(Snapshot {
                entries: entries(dir)?,
                actor: None,
            }),
            CatalogSource::Topic { kafka, topic, dir } => match read_topic(kafka, topic)? {
                Some(s) => Ok(s),
                None => Ok(Snapshot {
                    entries: entries(dir)?,
                    actor: None,
                }),
            },
        }
    }

    /// [`Self::snapshot`] at start-up: a broker that cannot be reached is waited for, with
    /// backoff (the catalog must not silently fall back to an older one).
    pub fn snapshot_when_reachable(&self) -> Result<Snapshot, String> {
        let mut wait = Duration::from_millis(500);
        loop {
            match self.snapshot() {
                Ok(s) => return Ok(s),
                Err(e) if matches!(self, CatalogSource::Topic { .. }) => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot read the catalog topic; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The catalog a snapshot describes, validated like `meterflow catalog check`.
    pub fn load(&self, snapshot: &Snapshot) -> Result<Catalog, String> {
        match (self, &snapshot.actor) {
            // A directory loads from its files, so problems name the file.
            (CatalogSource::Dir(dir), _) | (CatalogSource::Topic { dir, .. }, None) => {
                load_dir(dir).map_err(|e| e.to_string())
            }
            (CatalogSource::Topic { topic, .. }, Some(_)) => catalog_of(&snapshot.entries)
                .map_err(|e| format!("the catalog on topic `{topic}`: {e}")),
        }
    }
}

/// A catalog from its entries (as `catalog_log::entries` reads them from TOML).
pub fn catalog_of(entries: &BTreeMap<EntryKey, Value>) -> Result<Catalog, String> {
    let mut doc = serde_json::Map::new();
    for ((kind, id, _), value) in entries {
        if kind == "catalog" {
            doc.insert(id.clone(), value.clone());
        } else {
            let list = doc.entry(kind.clone()).or_insert_with(|| json!([]));
            if let Value::Array(items) = list {
                items.push(value.clone());
            }
        }
    }
    let text = toml::to_string(&Value::Object(doc)).map_err(|e| e.to_string())?;
    from_toml_str(&text).map_err(|e| e.to_string())
}

fn entry_key((kind, id, version): &EntryKey) -> String {
    format!("{kind}/{id}/{version}")
}

fn parse_key(key: &str) -> Option<EntryKey> {
    let (rest, version) = key.rsplit_once('/')?;
    let (kind, id) = rest.split_once('/')?;
    Some((kind.to_string(), id.to_string(), version.parse().ok()?))
}

/// A digest of a catalog's entries, the same for the same entries in any order.
impl Snapshot {
    /// A digest of the whole catalog (what a `_published` marker carries).
    pub fn digest(&self) -> String {
        digest(&self.entries)
    }
}

fn digest(entries: &BTreeMap<EntryKey, Value>) -> String {
    let mut text = String::new();
    for (k, v) in entries {
        text.push_str(&entry_key(k));
        text.push('\n');
        text.push_str(&v.to_string());
        text.push('\n');
    }
    format!("{:016x}", fingerprint(text.as_bytes()))
}

/// The last complete publish on the topic, if any: reads the topic from its start to its end.
pub fn read_topic(kafka: &KafkaConfig, topic: &str) -> Result<Option<Snapshot>, String> {
    let mut cfg = kafka.client_config()?;
    cfg.set("group.id", format!("{}-catalog", kafka.group_id));
    let consumer: BaseConsumer = cfg
        .create()
        .map_err(|e| format!("cannot create a Kafka consumer for the catalog: {e}"))?;
    let (low, high) = match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
        Ok(w) => w,
        // Nothing published yet.
        Err(e)
            if matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::UnknownPartition
                )
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot read catalog topic `{topic}`: {e}")),
    };
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut state: BTreeMap<EntryKey, Value> = BTreeMap::new();
    let mut complete = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            return Err(format!(
                "reading catalog topic `{topic}` timed out at offset {next} of {high}"
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match message {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(format!("reading catalog topic `{topic}`: {e}")),
        };
        next = m.offset() + 1;
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let value: Option<Value> = match m.payload() {
            None => None,
            Some(p) => Some(serde_json::from_slice(p).map_err(|e| {
                format!(
                    "catalog topic `{topic}` offset {}: not JSON: {e}",
                    m.offset()
                )
            })?),
        };
        if key == MARKER {
            let Some(marker) = value else { continue };
            if marker["digest"].as_str() == Some(digest(&state).as_str()) {
                complete = Some(Snapshot {
                    entries: state.clone(),
                    actor: Some(marker["actor"].as_str().unwrap_or("").to_string()),
                });
            }
            continue;
        }
        let Some(entry) = parse_key(&key) else {
            tracing::warn!(
                topic,
                key,
                "catalog topic holds a key that names no entry; ignored"
            );
            continue;
        };
        match value {
            Some(v) => state.insert(entry, v),
            None => state.remove(&entry),
        };
    }
    Ok(complete)
}

/// `meterflow catalog publish`: the directory's catalog, validated, onto the topic (created
/// compacted if missing). Publishes the entries that differ from the topic's last publish,
/// tombstones for removed ones, then the marker. Returns the changes, as the change log will
/// show them; with `dry_run`, only returns them.
pub fn publish(
    dir: &Path,
    kafka: &KafkaConfig,
    topic: &str,
    actor: &str,
    dry_run: bool,
) -> Result<Vec<crate::sinks::catalog_log::Change>, String> {
    load_dir(dir).map_err(|e| e.to_string())?;
    let now = entries(dir)?;
    let before = read_topic(kafka, topic)?
        .map(|s| s.entries)
        .unwrap_or_default();
    crate::sinks::catalog_log::check_immutable(&before, &now)?;
    let changes = crate::sinks::catalog_log::changes(
        &before,
        &now,
        actor,
        meterflow_schemas::time::EventTime::now(),
    );
    if dry_run {
        return Ok(changes);
    }
    ensure_topic(kafka, topic)?;
    let producer: BaseProducer = kafka
        .producer_config()?
        .create()
        .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
    let send = |key: String, value: Option<String>| -> Result<(), String> {
        loop {
            let mut record = BaseRecord::to(topic).key(&key).partition(0);
            if let Some(v) = &value {
                record = record.payload(v);
            }
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(format!("publishing to `{topic}`: {e}")),
            }
        }
    };
    for (k, v) in &now {
        if before.get(k) != Some(v) {
            send(entry_key(k), Some(v.to_string()))?;
        }
    }
    for k in before.keys().filter(|k| !now.contains_key(*k)) {
        send(entry_key(k), None)?;
    }
    let marker = json!({
        "actor": actor,
        "published_at": meterflow_schemas::time::EventTime::now().to_string(),
        "entries": now.len(),
        "digest": digest(&now),
    });
    send(MARKER.to_string(), Some(marker.to_string()))?;
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("publishing to `{topic}`: not acknowledged: {e}"))?;
    Ok(changes)
}

/// Creates the catalog topic (one partition, compacted) unless it exists.
fn ensure_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka
        .producer_config()?
        .create()
        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let results = runtime
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .map_err(|e| format!("cannot create catalog topic `{topic}`: {e}"))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the compacted catalog topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("cannot create catalog topic `{topic}`: {code}")),
        }
    }
    Ok(())
}

/// Watches the catalog source of a running pipeline; asks the run to drain (`stop`) once a
/// valid new catalog is there.
pub struct Watcher {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub fn start(
        source: CatalogSource,
        current: Snapshot,
        every: Duration,
        stop: Arc<AtomicBool>,
    ) -> Watcher {
        let done = Arc::new(AtomicBool::new(false));
        let quit = done.clone();
        let thread = std::thread::spawn(move || {
            let mut refused: Option<Snapshot> = None;
            let mut last_check = Instant::now();
            while !quit.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if last_check.elapsed() < every {
                    continue;
                }
                last_check = Instant::now();
                let snapshot = match source.snapshot() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the catalog source; billing goes on with the current catalog");
                        continue;
                    }
                };
                if snapshot.entries == current.entries || refused.as_ref() == Some(&snapshot) {
                    continue;
                }
                let checked =
                    crate::sinks::catalog_log::check_immutable(&current.entries, &snapshot.entries)
                        .and_then(|()| source.load(&snapshot));
                match checked {
                    Ok(_) => {
                        tracing::info!(
                            by = snapshot.actor.as_deref().unwrap_or("(directory)"),
                            "the catalog changed; draining to the next commit to switch"
                        );
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(problems = %e, "the new catalog is refused; billing goes on with the current catalog");
                        refused = Some(snapshot);
                    }
                }
            }
        });
        Watcher {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_rebuilt_from_its_entries_is_the_same_catalog() {
        let dir = std::env::temp_dir().join(format!("mf-catalog-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("catalog.toml"), crate::commands::demo::CATALOG).unwrap();
        let from_files = load_dir(&dir).unwrap();
        let from_entries = catalog_of(&entries(&dir).unwrap()).unwrap();
        // Entries come sorted by id, so indices may differ: compare by name.
        let prices = |c: &Catalog| {
            let mut v: Vec<String> = c
                .prices
                .iter()
                .map(|p| {
                    format!(
                        "{} v{} {} {} {:?} {:?}",
                        c.rate_cards[p.rate_card.ix()].id,
                        p.version,
                        c.sku_id(p.sku),
                        c.region_name(p.region),
                        p.model,
                        p.unit_cost
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(prices(&from_files), prices(&from_entries));
        let contracts = |c: &Catalog| {
            let mut v: Vec<String> = c
                .contracts
                .iter()
                .map(|k| {
                    let mut terms = k.terms.clone();
                    let skus: Vec<&str> = terms
                        .discounts
                        .iter()
                        .map(|d| d.sku.map_or("", |s| c.sku_id(s)))
                        .collect();
                    terms.discounts.iter_mut().for_each(|d| d.sku = None);
                    format!(
                        "{} {:?} {:?} {:?} {skus:?}",
                        k.id, k.pinned_version, k.starts, terms
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(contracts(&from_files), contracts(&from_entries));
        assert_eq!(from_files.skus.len(), from_entries.skus.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_watcher_switches_only_to_a_valid_catalog_that_keeps_published_versions() {
        let dir = std::env::temp_dir().join(format!("mf-catalog-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("catalog.toml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        write(crate::commands::demo::CATALOG);
        let source = CatalogSource::Dir(dir.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = Watcher::start(
            source.clone(),
            source.snapshot().unwrap(),
            Duration::from_millis(10),
            stop.clone(),
        );
        let published = "unit_price = \"0.002\"";
        assert!(crate::commands::demo::CATALOG.contains(published));
        // A catalog that does not load, and one that edits a published version, are refused:
        // the pipeline goes on with the catalog it has. (Each is looked at many times over.)
        for refused in [
            crate::commands::demo::CATALOG.replace(published, "unit_price = \"two cents\""),
            crate::commands::demo::CATALOG.replace(published, "unit_price = \"0.003\""),
        ] {
            write(&refused);
            std::thread::sleep(Duration::from_millis(300));
            assert!(!stop.load(Ordering::SeqCst), "refused:\n{refused}");
        }
        // A valid change (a new customer) switches.
        write(&format!(
            "{}\n[[customer]]\nid = \"umbrella\"\nname = \"Umbrella\"\n",
            crate::commands::demo::CATALOG
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the watcher saw the valid change"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(watcher);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entry_keys_round_trip_and_the_digest_ignores_nothing() {
        let k: EntryKey = ("rate_card".into(), "std/eu".into(), 3);
        assert_eq!(parse_key(&entry_key(&k)), Some(k.clone()));
        let mut a = BTreeMap::new();
        a.insert(k.clone(), json!({"id": "std/eu", "version": 3}));
        let mut b = a.clone();
        assert_eq!(digest(&a), digest(&b));
        b.insert(k, json!({"id": "std/eu", "version": 4}));
        assert_ne!(digest(&a), digest(&b));
    }
}
