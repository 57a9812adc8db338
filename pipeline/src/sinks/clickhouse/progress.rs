//! Committed progress in ClickHouse (`sink_progress`): what a commit records (epoch, watermark,
//! offsets, each partition's event-time state, counts, catalog digest), and the clean-up of rows
//! no commit covers, after a crash and from a killed predecessor's late inserts.
use clickhouse::Row;
use meterflow_operators::decode::PartitionTime;
use meterflow_operators::progress::{Progress, ProgressStore};
use meterflow_operators::source::Position;
use meterflow_operators::Epoch;
use meterflow_schemas::lag::PartitionLag;
use meterflow_schemas::rows::Counts;
use meterflow_schemas::tables;
use meterflow_schemas::time::EventTime;
use serde::{Deserialize, Serialize};

use crate::sinks::clickhouse::client::{ClickHouse, Count};
use crate::sinks::clickhouse::sink::seconds;

#[derive(Row, Serialize)]
pub(crate) struct ProgressRow<'a> {
    pub generation: u32,
    pub epoch: u64,
    pub committed_at: u32,
    pub watermark_ms: i64,
    pub offsets: &'a str,
    pub counts: &'a str,
    /// The digest of the catalog the committed rows are priced under.
    pub catalog_digest: &'a str,
    /// Every partition's event-time state ([`RecordedPartition`], JSON).
    pub partitions: &'a str,
    /// The metering lag of the events the commit covers, per partition (JSON list of
    /// `meterflow_schemas::lag::PartitionLag`, sources by name).
    pub lag: &'a str,
}

/// Commits progress into `sink_progress`, and sweeps up after a killed predecessor.
pub struct ClickHouseProgress {
    pub ch: ClickHouse,
    /// Source names, recorded with each offset.
    pub sources: Vec<String>,
    pub generation: u32,
    /// The digest of the catalog this run prices with (re-rated to on start).
    pub catalog_digest: String,
    /// The epoch this start resumed after; a predecessor's rows beyond it are garbage.
    pub resumed_after: Option<Epoch>,
    /// Until when to look for late rows of a killed predecessor.
    pub sweep_until: std::time::Instant,
    /// When the last sweep ran (sweeps run at most once a second).
    pub last_sweep: Option<std::time::Instant>,
    /// With Kafka input: the consumer group the committed positions are mirrored to.
    pub group: Option<crate::sources::kafka::GroupOffsets>,
    /// Positions of inputs this run does not read, carried from the commit it resumed.
    pub elsewhere: Vec<RecordedOffset>,
}

/// One recorded reader position.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedOffset {
    pub source: String,
    pub partition: i32,
    pub next_offset: u64,
    /// For a file: [`Position::check`] (absent: nothing to check).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub check: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One partition's event-time state at a commit: the latest valid event time read from it and
/// whether it was idle. Named by topic, like [`RecordedOffset`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedPartition {
    pub source: String,
    pub partition: i32,
    pub max_time_ms: Option<i64>,
    pub idle: bool,
}

/// Writes one `sink_progress` row; `elsewhere`: positions of inputs this run does not read,
/// kept so a later run that reads them again resumes them.
pub(crate) fn write_progress(
    ch: &ClickHouse,
    generation: u32,
    p: &Progress,
    (sources, elsewhere): (&[String], &[RecordedOffset]),
    catalog_digest: &str,
) -> Result<(), String> {
    let offsets: Vec<RecordedOffset> = p
        .positions
        .iter()
        .map(|pos| RecordedOffset {
            source: sources
                .get(pos.source as usize)
                .cloned()
                .unwrap_or_default(),
            partition: pos.partition,
            next_offset: pos.next_offset,
            check: pos.check,
        })
        .chain(elsewhere.iter().cloned())
        .collect();
    let offsets = serde_json::to_string(&offsets).map_err(|e| e.to_string())?;
    let counts = serde_json::to_string(&p.counts).map_err(|e| e.to_string())?;
    let partitions: Vec<RecordedPartition> = p
        .partitions
        .iter()
        .map(|t| RecordedPartition {
            source: sources.get(t.source as usize).cloned().unwrap_or_default(),
            partition: t.partition,
            max_time_ms: t.max_time.map(|t| t.0),
            idle: t.idle,
        })
        .collect();
    let partitions = serde_json::to_string(&partitions).map_err(|e| e.to_string())?;
    let lag = serde_json::to_string(&named_lag(&p.lag, sources)).map_err(|e| e.to_string())?;
    let row = ProgressRow {
        generation,
        epoch: p.epoch,
        committed_at: seconds(EventTime::now()),
        watermark_ms: p.watermark.map_or(i64::MIN, |w| w.0),
        offsets: &offsets,
        counts: &counts,
        catalog_digest,
        partitions: &partitions,
        lag: &lag,
    };
    ch.insert::<ProgressRow<'static>>("sink_progress", &[row])
}

/// Lags with their sources named (the dataflow knows inputs by index).
pub fn named_lag(lag: &[PartitionLag], sources: &[String]) -> Vec<PartitionLag> {
    lag.iter()
        .map(|l| PartitionLag {
            source: l
                .source
                .parse::<usize>()
                .ok()
                .and_then(|i| sources.get(i))
                .cloned()
                .unwrap_or_else(|| l.source.clone()),
            ..l.clone()
        })
        .collect()
}

impl ProgressStore for ClickHouseProgress {
    fn commit(&mut self, p: &Progress) -> Result<(), String> {
        write_progress(
            &self.ch,
            self.generation,
            p,
            (&self.sources, &self.elsewhere),
            &self.catalog_digest,
        )?;
        tracing::debug!(epoch = p.epoch, "progress committed");
        if let Some(group) = &mut self.group {
            group.commit(&p.positions);
        }
        let now = std::time::Instant::now();
        if now < self.sweep_until
            && self
                .last_sweep
                .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1))
        {
            sweep_stale(&self.ch, self.generation, self.resumed_after)?;
            self.last_sweep = Some(now);
        }
        Ok(())
    }
}

/// The row `restore` reads back.
#[derive(Row, Deserialize)]
struct CommittedRow {
    generation: u32,
    epoch: u64,
    watermark_ms: i64,
    offsets: String,
    counts: String,
    catalog_digest: String,
    partitions: String,
}

/// The last commit, as `sink_progress` holds it.
pub(crate) struct LastCommit {
    pub generation: u32,
    pub progress: Progress,
    /// The digest of the catalog its rows are priced under ('' for commits older than the
    /// column: unknown).
    pub catalog_digest: String,
    /// Positions it recorded for inputs this run does not read.
    pub elsewhere: Vec<RecordedOffset>,
    /// It recorded no reader position at all: written before file positions were recorded,
    /// so a file-fed run resumes it by epoch.
    pub by_epoch_only: bool,
}

/// Reads the last commit of the latest generation, mapping recorded input names back to the
/// indices of `sources` (positions of inputs this run does not read are kept apart).
pub(crate) fn last_commit(
    ch: &ClickHouse,
    sources: &[String],
) -> Result<Option<LastCommit>, String> {
    let last: Vec<CommittedRow> = ch.fetch("SELECT generation, epoch, watermark_ms, offsets, counts, catalog_digest, partitions FROM {db}.sink_progress ORDER BY generation DESC, epoch DESC LIMIT 1")?;
    let Some(row) = last.into_iter().next() else {
        return Ok(None);
    };
    let offsets: Vec<RecordedOffset> = serde_json::from_str(&row.offsets)
        .map_err(|e| format!("sink_progress.offsets is unreadable: {e}"))?;
    let counts: Counts = serde_json::from_str(&row.counts)
        .map_err(|e| format!("sink_progress.counts is unreadable: {e}"))?;
    let by_epoch_only = offsets.is_empty();
    let (read, elsewhere): (Vec<_>, Vec<_>) = offsets
        .into_iter()
        .partition(|o| sources.contains(&o.source));
    let positions = read
        .into_iter()
        .filter_map(|o| {
            let source = sources.iter().position(|s| *s == o.source)?;
            Some(Position {
                source: source as u32,
                partition: o.partition,
                next_offset: o.next_offset,
                check: o.check,
            })
        })
        .collect();
    Ok(Some(LastCommit {
        generation: row.generation,
        progress: Progress {
            epoch: row.epoch,
            watermark: (row.watermark_ms != i64::MIN).then_some(EventTime(row.watermark_ms)),
            positions,
            partitions: restored_partitions(&row.partitions, sources)?,
            counts,
            lag: Vec::new(),
        },
        catalog_digest: row.catalog_digest,
        elsewhere,
        by_epoch_only,
    }))
}

/// The partitions' event-time state recorded with a commit, for the topics this run reads (''
/// for a commit written before the column: none recorded).
fn restored_partitions(json: &str, sources: &[String]) -> Result<Vec<PartitionTime>, String> {
    if json.is_empty() {
        return Ok(Vec::new());
    }
    let recorded: Vec<RecordedPartition> = serde_json::from_str(json)
        .map_err(|e| format!("sink_progress.partitions is unreadable: {e}"))?;
    Ok(recorded
        .into_iter()
        .filter_map(|r| {
            let source = sources.iter().position(|s| *s == r.source)?;
            Some(PartitionTime {
                source: source as u32,
                partition: r.partition,
                max_time: r.max_time_ms.map(EventTime),
                idle: r.idle,
            })
        })
        .collect())
}

/// Deletes rows a killed predecessor's late inserts landed: an older generation and an epoch
/// after the one this generation resumed from.
pub fn sweep_stale(
    ch: &ClickHouse,
    generation: u32,
    resumed_after: Option<u64>,
) -> Result<(), String> {
    let condition = format!(
        "generation < {generation} AND epoch {}",
        resumed_after.map_or(">= 0".to_string(), |e| format!("> {e}"))
    );
    delete_where(ch, &condition)
}

/// Deletes rows of epochs after `committed` (every row if nothing was committed).
pub(crate) fn delete_uncommitted(ch: &ClickHouse, committed: Option<u64>) -> Result<(), String> {
    let condition = match committed {
        Some(e) => format!("epoch > {e}"),
        None => "epoch >= 0".to_string(),
    };
    delete_where(ch, &condition)
}

fn delete_where(ch: &ClickHouse, condition: &str) -> Result<(), String> {
    for table in tables::outputs().map(|t| t.name) {
        let rows: Vec<Count> = ch.fetch(&format!(
            "SELECT count() AS n FROM {{db}}.{table} WHERE {condition}"
        ))?;
        if rows.first().is_none_or(|c| c.n == 0) {
            continue;
        }
        tracing::info!(
            table,
            rows = rows[0].n,
            "removing rows of an uncommitted epoch"
        );
        ch.delete_where(table, condition)?;
    }
    Ok(())
}

/// Waits until no insert into the database is running (one left by a killed run).
pub(crate) fn settle_inserts(ch: &ClickHouse) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let running: Vec<Count> = ch.fetch("SELECT count() AS n FROM system.processes WHERE startsWith(query, 'INSERT INTO {db}.')")?;
        if running.first().is_none_or(|c| c.n == 0) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("inserts into the database are still running after 2 minutes; is another meterflow writing to it? One database serves one pipeline".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
