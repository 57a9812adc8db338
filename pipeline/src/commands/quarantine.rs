//! `meterflow quarantine list|replay|resolve`: the rejected records by reason, with what fixes
//! them; and replaying fixed records under their original event ids, so usage that was rejected
//! gets billed — once — and its rejection is marked resolved with the lineage to its fix.
//!
//! Where a replay goes depends on the pipeline: an embedded run is run again over its inputs and
//! the fixes; a ClickHouse pipeline fed from files takes the fixes as its next run (a new file
//! is read whole, see `docs/clickhouse.md`); one fed from Kafka gets them produced to its topic,
//! and bills them as it bills any event.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use meterflow_operators::dataflow::Cluster;
use meterflow_schemas::quarantine::{select, Quarantined, Resolution};
use meterflow_schemas::time::{EventTime, Span};

use crate::commands::open_clickhouse;
use crate::commands::report::ReportArgs;
use crate::commands::run::{run, RunArgs};
use crate::reports::quarantine::{
    from_clickhouse, from_output, render_list, resolutions_from_output,
};
use crate::reports::tables::{input_paths, read_table};
use crate::sinks::clickhouse::client::ClickHouse;
use crate::sinks::quarantine;
use crate::sources::kafka::{publish, KafkaConfig};

#[derive(clap::Subcommand)]
pub enum QuarantineCommand {
    /// Rejected records by reason: how many, how many a replay resolved, what fixes them.
    List {
        /// Output directory of an embedded run.
        #[arg(long, short = 'o', default_value = "out")]
        out: PathBuf,
        /// Read ClickHouse at this HTTP URL instead (overrides clickhouse.url).
        #[arg(long)]
        clickhouse_url: Option<String>,
        /// Configuration file; its [clickhouse] section selects ClickHouse.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this reason code.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Replay fixed records (JSONL, each keeping the event_id of the record it fixes) through
    /// the pipeline; accepted ones are billed and their rejections marked resolved.
    Replay {
        #[command(flatten)]
        report: ReportArgs,
        /// The fixed records.
        #[arg(long)]
        fixed: PathBuf,
        /// With a pipeline reading Kafka: wait up to this long (e.g. `2m`) for it to commit the
        /// fixes, then resolve them. Without it, run `quarantine resolve` later.
        #[arg(long, value_parser = Span::parse)]
        wait: Option<Span>,
    },
    /// With ClickHouse: mark resolved every rejection whose event_id a later committed event
    /// was accepted with (fixes sent to the pipeline's input, e.g. its Kafka topic).
    Resolve {
        /// ClickHouse HTTP URL (overrides clickhouse.url).
        #[arg(long)]
        clickhouse_url: Option<String>,
        /// Configuration file; its [clickhouse] section selects ClickHouse.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

impl QuarantineCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            QuarantineCommand::List {
                out,
                clickhouse_url,
                config,
                reason,
            } => {
                let (_, ch) = open_clickhouse(config.as_deref(), clickhouse_url.as_ref())?;
                let q = match &ch {
                    Some(ch) => from_clickhouse(ch),
                    None => from_output(&out),
                }
                .map_err(anyhow::Error::msg)?;
                print!("{}", render_list(&q, reason.as_deref()));
                Ok(ExitCode::SUCCESS)
            }
            QuarantineCommand::Replay {
                report,
                fixed,
                wait,
            } => replay(&report, &fixed, wait),
            QuarantineCommand::Resolve {
                clickhouse_url,
                config,
            } => {
                let (_, ch) = open_clickhouse(config.as_deref(), clickhouse_url.as_ref())?;
                let Some(ch) = ch else {
                    anyhow::bail!("`quarantine resolve` reads ClickHouse: pass --clickhouse-url or a config with [clickhouse] url; an embedded run's fixes are resolved by `quarantine replay`");
                };
                let new = resolve_committed(&ch).map_err(anyhow::Error::msg)?;
                println!("{} rejections resolved by fixes accepted since", new.len());
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// What a replay did with the records it sent.
struct Outcome {
    /// Accepted: (event id, offset in the replay file).
    accepted: Vec<(String, u64)>,
    /// Rejected again: (event id, reason).
    rejected: Vec<(String, String)>,
}

fn replay(a: &ReportArgs, fixed: &Path, wait: Option<Span>) -> anyhow::Result<ExitCode> {
    let r = a.open("replay")?;
    let q = match &r.ch {
        Some(ch) => from_clickhouse(ch),
        None => from_output(&a.out),
    }
    .map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(fixed)
        .with_context(|| format!("cannot read --fixed {}", fixed.display()))?;
    let quarantined = q.by_event_id();
    let (chosen, skipped) = select(text.lines(), &quarantined, &q.resolved());
    for s in &skipped {
        println!("not replayed: {s}");
    }
    if chosen.is_empty() {
        println!("nothing to replay");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(ch) = &r.ch {
        if reads_kafka(ch, &r.cfg.kafka).map_err(anyhow::Error::msg)? {
            return replay_to_kafka(ch, &r.cfg.kafka, (&chosen, &quarantined), wait);
        }
    }
    // The chosen records, in a file of their own: the run reads it as a new input, so its
    // offsets are the replayed records' lineage.
    let dir = std::fs::canonicalize(&a.out)
        .unwrap_or_else(|_| a.out.clone())
        .join("replays");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let replay_file = dir.join(format!("{}.jsonl", r.run_id));
    let body: String = chosen.iter().map(|(_, line)| format!("{line}\n")).collect();
    std::fs::write(&replay_file, body)
        .with_context(|| format!("cannot write {}", replay_file.display()))?;
    // A file-fed ClickHouse pipeline resumes from its commit and reads the new file whole; an
    // embedded run is run again over its inputs, then the fixes.
    let mut inputs = match r.ch {
        Some(_) => Vec::new(),
        None => earlier_inputs(&a.out)?,
    };
    inputs.push(replay_file.clone());
    run(&RunArgs {
        inputs,
        catalog: a.catalog.clone(),
        out: a.out.clone(),
        config: a.config.clone(),
        clickhouse_url: a.clickhouse_url.clone(),
        cluster: Cluster {
            threads: 0,
            process: 0,
            addresses: Vec::new(),
            join_timeout: Cluster::DEFAULT_JOIN_TIMEOUT,
        },
        quiet: true,
        metrics_addr: None,
    })?;
    if let Some(ch) = &r.ch {
        let ids: Vec<&str> = chosen.iter().map(|(id, _)| id.as_str()).collect();
        return resolve_replayed(ch, &ids, &format!("{}", replay_file.display()));
    }
    let source = replay_file.display().to_string();
    let outcome = outcome_in_files(&a.out, &source).map_err(anyhow::Error::msg)?;
    let new: Vec<Resolution> = outcome
        .accepted
        .iter()
        .filter_map(|(id, offset)| {
            let Quarantined {
                reason,
                source: rejected_source,
                offset: rejected_offset,
            } = quarantined.get(id)?.clone();
            Some(Resolution {
                resolved_at: r.at,
                run_id: r.run_id.clone(),
                event_id: id.clone(),
                reason,
                rejected_source,
                rejected_offset,
                replay_source: source.clone(),
                replay_offset: *offset,
                sign: 1,
            })
        })
        .collect();
    let mut all = resolutions_from_output(&a.out).map_err(anyhow::Error::msg)?;
    all.extend(new.iter().cloned());
    quarantine::to_files(&a.out, r.catalog.clone(), r.cfg.billing.period, &all)
        .map_err(anyhow::Error::msg)?;
    println!(
        "replayed {} records from {}: {} accepted and billed (their rejections resolved), {} rejected again",
        chosen.len(),
        replay_file.display(),
        new.len(),
        outcome.rejected.len()
    );
    for (id, reason) in &outcome.rejected {
        println!("  rejected again: {id}: {reason}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the pipeline writing to `ch` reads Kafka: its last commit recorded a position in
/// one of the configured topics (else it is fed from files).
fn reads_kafka(ch: &ClickHouse, kafka: &KafkaConfig) -> Result<bool, String> {
    let last = crate::sinks::clickhouse::progress::last_commit(ch, &kafka.topics)?;
    Ok(last.is_some_and(|l| !l.progress.positions.is_empty()))
}

/// Sends each chosen fix to the topic its rejected record was read from (the first topic the
/// pipeline reads if that one is not among them), keyed by event id; then waits up to `wait`
/// for the pipeline to commit them and resolves them.
fn replay_to_kafka(
    ch: &ClickHouse,
    kafka: &KafkaConfig,
    (chosen, quarantined): (&[(String, &str)], &BTreeMap<String, Quarantined>),
    wait: Option<Span>,
) -> anyhow::Result<ExitCode> {
    let mut by_topic: BTreeMap<&str, Vec<(String, &str)>> = BTreeMap::new();
    for (id, line) in chosen {
        let topic = quarantined
            .get(id)
            .map(|q| q.source.as_str())
            .filter(|s| kafka.topics.iter().any(|t| t == s))
            .unwrap_or(&kafka.topics[0]);
        by_topic.entry(topic).or_default().push((id.clone(), *line));
    }
    for (topic, records) in &by_topic {
        publish(kafka, topic, records).map_err(anyhow::Error::msg)?;
        println!("sent {} fixes to {topic}", records.len());
    }
    let topic = by_topic.keys().copied().collect::<Vec<_>>().join(", ");
    let Some(wait) = wait else {
        println!("once the pipeline has committed them, `meterflow quarantine resolve` marks their rejections resolved (or replay with --wait 2m)");
        return Ok(ExitCode::SUCCESS);
    };
    let ids: Vec<&str> = chosen.iter().map(|(id, _)| id.as_str()).collect();
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(wait.millis() as u64);
    loop {
        let (resolved, again) = replay_outcome(ch, &ids).map_err(anyhow::Error::msg)?;
        if resolved.len() + again.len() >= ids.len() || std::time::Instant::now() > deadline {
            return Ok(report_replay(&ids, &topic, &resolved, &again));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// After a file-fed pipeline's run over the fixes: resolves what it accepted, and says so.
fn resolve_replayed(ch: &ClickHouse, ids: &[&str], source: &str) -> anyhow::Result<ExitCode> {
    let (resolved, again) = replay_outcome(ch, ids).map_err(anyhow::Error::msg)?;
    Ok(report_replay(ids, source, &resolved, &again))
}

/// Resolves the fixes committed so far; then, of the replayed event ids: those resolved, and
/// those rejected again (with the latest reason).
fn replay_outcome(
    ch: &ClickHouse,
    ids: &[&str],
) -> Result<(BTreeSet<String>, BTreeMap<String, String>), String> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Again {
        event_id: String,
        reason: String,
    }
    resolve_committed(ch)?;
    let list = format!(
        "({})",
        crate::sinks::clickhouse::client::sql_list(ids.iter().copied())
    );
    let resolved: Vec<String> = ch.fetch(&format!(
        "SELECT event_id FROM {{db}}.quarantine_resolutions WHERE event_id IN {list} \
         GROUP BY event_id HAVING sum(sign) > 0"
    ))?;
    let again: Vec<Again> = ch.fetch(&format!(
        "SELECT event_id, argMax(reason, epoch) AS reason FROM {{db}}.rejections \
         WHERE event_id IN {list} AND epoch <= (SELECT max(epoch) FROM {{db}}.sink_progress) \
         GROUP BY event_id HAVING count() > 1"
    ))?;
    let resolved: BTreeSet<String> = resolved.into_iter().collect();
    let again = again
        .into_iter()
        .filter(|a| !resolved.contains(&a.event_id))
        .map(|a| (a.event_id, a.reason))
        .collect();
    Ok((resolved, again))
}

fn report_replay(
    ids: &[&str],
    source: &str,
    resolved: &BTreeSet<String>,
    again: &BTreeMap<String, String>,
) -> ExitCode {
    let waiting: Vec<&&str> = ids
        .iter()
        .filter(|id| !resolved.contains(**id) && !again.contains_key(**id))
        .collect();
    println!(
        "replayed {} records from {source}: {} accepted and billed (their rejections resolved), {} rejected again, {} not committed yet",
        ids.len(),
        resolved.len(),
        again.len(),
        waiting.len()
    );
    for (id, reason) in again {
        println!("  rejected again: {id}: {reason}");
    }
    for id in waiting {
        println!("  not committed yet: {id}");
    }
    ExitCode::SUCCESS
}

/// The inputs of the run that wrote `out`, in their order (the replay comes after them, so the
/// tables keep their source numbers).
fn earlier_inputs(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let paths: BTreeMap<usize, String> = input_paths(out)
        .into_iter()
        .filter_map(|(i, p)| Some((i.parse().ok()?, p)))
        .collect();
    if paths.is_empty() {
        anyhow::bail!(
            "{} has no sources.csv: pass the output directory of a `meterflow run`",
            out.display()
        );
    }
    paths
        .into_values()
        .map(|p| {
            if p == "-" {
                anyhow::bail!("the run read standard input, which cannot be read again: run it from a file to replay fixes into it");
            }
            Ok(PathBuf::from(p))
        })
        .collect()
}

fn outcome_in_files(out: &Path, source: &str) -> Result<Outcome, String> {
    let index = input_paths(out)
        .into_iter()
        .find(|(_, p)| p == source)
        .map(|(i, _)| i)
        .ok_or_else(|| format!("{source} is not among the run's inputs"))?;
    let read = |t: &str| read_table(out, t).map_err(|e| format!("cannot read {t}: {e}"));
    let get = |r: &crate::reports::tables::Row, k: &str| r.get(k).cloned().unwrap_or_default();
    let accepted = read("usage_events")?
        .iter()
        .filter(|r| get(r, "source") == index)
        .map(|r| (get(r, "event_id"), get(r, "offset").parse().unwrap_or(0)))
        .collect();
    let rejected = read("rejections")?
        .iter()
        .filter(|r| get(r, "source") == index)
        .map(|r| (get(r, "event_id"), get(r, "reason")))
        .collect();
    Ok(Outcome { accepted, rejected })
}

/// Marks resolved, in ClickHouse, the rejections whose fixes are committed (see
/// [`resolve_in_clickhouse`]); returns the new resolutions.
fn resolve_committed(ch: &ClickHouse) -> Result<Vec<Resolution>, String> {
    let new = resolve_in_clickhouse(ch)?;
    quarantine::to_clickhouse(ch, &new)?;
    Ok(new)
}

/// Rejections (up to the last commit) whose event_id an event accepted in a later epoch
/// carries, and that no resolution names yet: one resolution each, naming the first rejection
/// and the accepted fix.
fn resolve_in_clickhouse(ch: &ClickHouse) -> Result<Vec<Resolution>, String> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Fixed {
        event_id: String,
        reason: String,
        source: String,
        offset: u64,
        replay_source: String,
        replay_offset: u64,
    }
    let fixed: Vec<Fixed> = ch.fetch(
        "SELECT event_id, reason, source, offset, replay_source, replay_offset \
         FROM (SELECT event_id, reason, source, offset, epoch AS rejected_epoch FROM {db}.rejections \
           WHERE event_id != '' AND epoch <= (SELECT max(epoch) FROM {db}.sink_progress)) AS rejected \
         ANY INNER JOIN (SELECT event_id, source AS replay_source, offset AS replay_offset, epoch AS accepted_epoch \
           FROM {db}.usage_events WHERE epoch <= (SELECT max(epoch) FROM {db}.sink_progress)) AS accepted \
         USING event_id \
         WHERE accepted_epoch > rejected_epoch AND event_id NOT IN \
           (SELECT event_id FROM {db}.quarantine_resolutions GROUP BY event_id HAVING sum(sign) > 0) \
         ORDER BY event_id, rejected_epoch, offset",
    )?;
    let at = EventTime::now();
    let run_id = format!("resolve-{}", at.0);
    let mut seen = BTreeSet::new();
    Ok(fixed
        .into_iter()
        .filter(|f| seen.insert(f.event_id.clone()))
        .map(|f| Resolution {
            resolved_at: at,
            run_id: run_id.clone(),
            event_id: f.event_id,
            reason: f.reason,
            rejected_source: f.source,
            rejected_offset: f.offset,
            replay_source: f.replay_source,
            replay_offset: f.replay_offset,
            sign: 1,
        })
        .collect())
}
