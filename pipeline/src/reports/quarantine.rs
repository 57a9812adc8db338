//! Reading the quarantine back: rejected records (with where they were read) and the
//! resolutions of replayed fixes, from a run's CSV tables or from ClickHouse; and the list
//! `meterflow quarantine list` prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use clickhouse::Row;
use meterflow_schemas::quarantine::{Quarantined, Resolution};
use meterflow_schemas::tables;
use meterflow_schemas::time::EventTime;
use serde::Deserialize;

use crate::reports::tables::{input_paths, read_table, Row as CsvRow};
use crate::sinks::clickhouse::client::ClickHouse;

/// One rejected record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub event_id: String,
    pub reason: String,
    pub remediation: String,
    /// The input path (files) or topic the record was read from, and where.
    pub source: String,
    pub offset: u64,
}

/// The quarantine: every rejection and every resolution.
#[derive(Default)]
pub struct Quarantine {
    pub rejected: Vec<Rejected>,
    pub resolutions: Vec<Resolution>,
}

impl Quarantine {
    /// Event ids whose rejection is resolved (net of any retracted resolution).
    pub fn resolved(&self) -> BTreeSet<String> {
        let mut net: BTreeMap<&str, i64> = BTreeMap::new();
        for r in &self.resolutions {
            *net.entry(&r.event_id).or_default() += i64::from(r.sign);
        }
        net.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// Rejections a fix can name: those with an event id, by it (the first rejection of an id).
    pub fn by_event_id(&self) -> BTreeMap<String, Quarantined> {
        let mut out = BTreeMap::new();
        for r in self.rejected.iter().filter(|r| !r.event_id.is_empty()) {
            out.entry(r.event_id.clone())
                .or_insert_with(|| Quarantined {
                    reason: r.reason.clone(),
                    source: r.source.clone(),
                    offset: r.offset,
                });
        }
        out
    }
}

fn field<'r>(r: &'r CsvRow, name: &str) -> &'r str {
    r.get(name).map_or("", |s| s.as_str())
}

/// The quarantine of a run's output directory.
pub fn from_output(out: &Path) -> Result<Quarantine, String> {
    let paths = input_paths(out);
    let rows = read_table(out, tables::REJECTIONS.name)
        .map_err(|e| format!("cannot read {}/rejections: {e}", out.display()))?;
    let rejected = rows
        .iter()
        .map(|r| Rejected {
            event_id: field(r, "event_id").into(),
            reason: field(r, "reason").into(),
            remediation: field(r, "remediation").into(),
            source: paths
                .get(field(r, "source"))
                .cloned()
                .unwrap_or_else(|| field(r, "source").to_string()),
            offset: field(r, "offset").parse().unwrap_or(0),
        })
        .collect();
    Ok(Quarantine {
        rejected,
        resolutions: resolutions_from_output(out)?,
    })
}

/// The resolutions written beside a run's tables (none before the first replay).
pub fn resolutions_from_output(out: &Path) -> Result<Vec<Resolution>, String> {
    let table = tables::QUARANTINE_RESOLUTIONS.name;
    if !out.join(table).exists() {
        return Ok(Vec::new());
    }
    let rows = read_table(out, table)
        .map_err(|e| format!("cannot read {}/{table}: {e}", out.display()))?;
    rows.iter()
        .map(|r| {
            Ok(Resolution {
                resolved_at: EventTime::parse_rfc3339(field(r, "resolved_at"))
                    .map_err(|e| format!("{table}: resolved_at: {e}"))?,
                run_id: field(r, "run_id").into(),
                event_id: field(r, "event_id").into(),
                reason: field(r, "reason").into(),
                rejected_source: field(r, "rejected_source").into(),
                rejected_offset: field(r, "rejected_offset").parse().unwrap_or(0),
                replay_source: field(r, "replay_source").into(),
                replay_offset: field(r, "replay_offset").parse().unwrap_or(0),
                sign: field(r, "sign").parse().unwrap_or(0),
            })
        })
        .collect()
}

#[derive(Row, Deserialize)]
struct RejectedRow {
    event_id: String,
    reason: String,
    remediation: String,
    source: String,
    offset: u64,
}

#[derive(Row, Deserialize)]
struct ResolutionRow {
    resolved_at: u32,
    run_id: String,
    event_id: String,
    reason: String,
    rejected_source: String,
    rejected_offset: u64,
    replay_source: String,
    replay_offset: u64,
    sign: i8,
}

/// The quarantine in ClickHouse, up to the last commit.
pub fn from_clickhouse(ch: &ClickHouse) -> Result<Quarantine, String> {
    let rejected: Vec<RejectedRow> = ch.fetch(
        "SELECT event_id, reason, remediation, source, offset FROM {db}.rejections \
         WHERE epoch <= (SELECT max(epoch) FROM {db}.sink_progress) \
         ORDER BY reason, source, partition, offset",
    )?;
    let resolutions: Vec<ResolutionRow> = ch.fetch(
        "SELECT resolved_at, run_id, event_id, reason, rejected_source, rejected_offset, \
         replay_source, replay_offset, sign FROM {db}.quarantine_resolutions ORDER BY resolved_at",
    )?;
    Ok(Quarantine {
        rejected: rejected
            .into_iter()
            .map(|r| Rejected {
                event_id: r.event_id,
                reason: r.reason,
                remediation: r.remediation,
                source: r.source,
                offset: r.offset,
            })
            .collect(),
        resolutions: resolutions
            .into_iter()
            .map(|r| Resolution {
                resolved_at: EventTime(i64::from(r.resolved_at) * 1000),
                run_id: r.run_id,
                event_id: r.event_id,
                reason: r.reason,
                rejected_source: r.rejected_source,
                rejected_offset: r.rejected_offset,
                replay_source: r.replay_source,
                replay_offset: r.replay_offset,
                sign: r.sign,
            })
            .collect(),
    })
}

/// Rejections by reason: how many, how many are resolved, what to do, and some event ids.
pub fn render_list(q: &Quarantine, reason: Option<&str>) -> String {
    let resolved = q.resolved();
    let mut by_reason: BTreeMap<&str, (usize, usize, &str, Vec<&str>)> = BTreeMap::new();
    for r in q
        .rejected
        .iter()
        .filter(|r| reason.is_none_or(|want| want == r.reason))
    {
        let e = by_reason.entry(&r.reason).or_default();
        e.0 += 1;
        e.2 = &r.remediation;
        if !r.event_id.is_empty() && resolved.contains(&r.event_id) {
            e.1 += 1;
        } else if e.3.len() < 5 {
            e.3.push(if r.event_id.is_empty() {
                "(no event_id)"
            } else {
                &r.event_id
            });
        }
    }
    let mut s = String::new();
    let total: usize = by_reason.values().map(|v| v.0).sum();
    let fixed: usize = by_reason.values().map(|v| v.1).sum();
    let _ = writeln!(
        s,
        "{total} rejected records, {fixed} resolved by a replayed fix, {} waiting",
        total - fixed
    );
    let mut rows: Vec<_> = by_reason.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
    for (reason, (n, done, remediation, examples)) in rows {
        let _ = writeln!(s, "\n{reason}: {n} rejected, {done} resolved");
        let _ = writeln!(s, "  fix: {remediation}");
        if !examples.is_empty() {
            let _ = writeln!(s, "  waiting, e.g.: {}", examples.join(" "));
        }
    }
    s
}
