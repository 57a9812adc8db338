//! The catalog change log: who changed what in the catalog, when, as a diff finance can read.
//!
//! A catalog's entries are keyed by (entity, id, version): `sku`, `customer`, `contract`, `tax`
//! and `rate_card` (one entry per published version), plus `catalog` settings. Recording
//! compares the entries of a catalog directory, as written in its TOML, with the latest state
//! the log holds, and appends one row per entry added, changed or removed, with the fields that
//! changed (before and after) and the entry's full new state. The log is a JSON-lines file or
//! the `catalog_changes` table in ClickHouse; `meterflow catalog log` prints it.
//!
//! A run with ClickHouse records the catalog it starts with (actor `METERFLOW_ACTOR`, else
//! `meterflow run`), so every catalog a production pipeline billed with is in the log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use meterflow_schemas::catalog::collect_toml;
use meterflow_schemas::time::EventTime;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sinks::clickhouse::client::ClickHouse;

/// (entity, id, version): version is 0 for unversioned entities.
pub type EntryKey = (String, String, u32);

/// One recorded change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct Change {
    /// Seconds since the epoch (UTC).
    pub changed_at: u32,
    pub actor: String,
    pub entity: String,
    pub entity_id: String,
    pub version: u32,
    /// `added`, `changed` or `removed`.
    pub action: String,
    /// JSON: `{"changes": [{"field", "before", "after"}], "after": <entry or null>}`.
    pub diff: String,
}

/// The entries of a catalog directory as written (TOML turned into JSON values).
pub fn entries(dir: &Path) -> Result<BTreeMap<EntryKey, Value>, String> {
    let mut files = Vec::new();
    collect_toml(dir, &mut files).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    files.sort();
    let mut out = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let doc: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        for (kind, value) in doc {
            let value =
                serde_json::to_value(&value).map_err(|e| format!("{}: {e}", file.display()))?;
            match value {
                Value::Array(items) => {
                    for item in items {
                        let id = item["id"]
                            .as_str()
                            .or_else(|| item["sku"].as_str())
                            .unwrap_or("")
                            .to_string();
                        // Rate cards are published in versions; a contract's `version` pins
                        // one and is a field like any other.
                        let version = match kind.as_str() {
                            "rate_card" => item["version"].as_u64().unwrap_or(0) as u32,
                            _ => 0,
                        };
                        out.insert((kind.clone(), id, version), item);
                    }
                }
                other => {
                    out.insert(("catalog".to_string(), kind, 0), other);
                }
            }
        }
    }
    Ok(out)
}

/// The state the log describes: the latest `after` of every entry not removed since.
pub fn state(log: &[Change]) -> BTreeMap<EntryKey, Value> {
    let mut out = BTreeMap::new();
    for c in log {
        let key = (c.entity.clone(), c.entity_id.clone(), c.version);
        let after = serde_json::from_str::<Value>(&c.diff)
            .ok()
            .map(|d| d["after"].clone())
            .unwrap_or(Value::Null);
        if after.is_null() {
            out.remove(&key);
        } else {
            out.insert(key, after);
        }
    }
    out
}

/// The changes that take the log's state to `now`.
pub fn changes(
    before: &BTreeMap<EntryKey, Value>,
    now: &BTreeMap<EntryKey, Value>,
    actor: &str,
    at: EventTime,
) -> Vec<Change> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&EntryKey> = before.keys().chain(now.keys()).collect();
    for key in keys {
        let (old, new) = (before.get(key), now.get(key));
        let action = match (old, new) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (Some(a), Some(b)) if a != b => "changed",
            _ => continue,
        };
        let mut fields = Vec::new();
        let empty = serde_json::Map::new();
        let as_map = |v: Option<&Value>| -> serde_json::Map<String, Value> {
            match v {
                Some(Value::Object(m)) => m.clone(),
                Some(other) => [("value".to_string(), other.clone())].into_iter().collect(),
                None => empty.clone(),
            }
        };
        let (a, b) = (as_map(old), as_map(new));
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for name in names {
            if a.get(name) != b.get(name) {
                fields.push(json!({
                    "field": name,
                    "before": a.get(name).cloned().unwrap_or(Value::Null),
                    "after": b.get(name).cloned().unwrap_or(Value::Null),
                }));
            }
        }
        out.push(Change {
            changed_at: (at.millis() / 1000).max(0) as u32,
            actor: actor.to_string(),
            entity: key.0.clone(),
            entity_id: key.1.clone(),
            version: key.2,
            action: action.to_string(),
            diff: json!({ "changes": fields, "after": new.cloned().unwrap_or(Value::Null) })
                .to_string(),
        });
    }
    out
}

/// Where the log lives.
pub enum Store<'a> {
    File(&'a Path),
    ClickHouse(&'a ClickHouse),
}

impl Store<'_> {
    pub fn read(&self) -> Result<Vec<Change>, String> {
        match self {
            Store::File(path) => {
                if !path.exists() {
                    return Ok(Vec::new());
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .enumerate()
                    .map(|(i, l)| {
                        serde_json::from_str(l)
                            .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
                    })
                    .collect()
            }
            Store::ClickHouse(ch) => ch.fetch(
                "SELECT toUInt32(changed_at) AS changed_at, actor, entity, entity_id, version, action, diff \
                 FROM {db}.catalog_changes ORDER BY changed_at, entity, entity_id, version",
            ),
        }
    }

    pub fn append(&self, rows: &[Change]) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            Store::File(path) => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                for r in rows {
                    let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
                    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
                }
                f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
            }
            Store::ClickHouse(ch) => ch.insert::<Change>("catalog_changes", rows),
        }
    }
}

/// Records what changed in the catalog at `dir` since the log's last state. A published
/// rate-card version is immutable: changing or removing one is refused, naming the fix.
pub fn record(dir: &Path, actor: &str, store: &Store) -> Result<Vec<Change>, String> {
    record_entries(&entries(dir)?, actor, store)
}

/// [`record`] for a catalog given as its entries.
pub fn record_entries(
    now: &BTreeMap<EntryKey, Value>,
    actor: &str,
    store: &Store,
) -> Result<Vec<Change>, String> {
    let before = state(&store.read()?);
    check_immutable(&before, now)?;
    let rows = changes(&before, now, actor, EventTime::now());
    store.append(&rows)?;
    Ok(rows)
}

/// Refuses a catalog that changes or removes a rate-card version `before` has published.
pub fn check_immutable(
    before: &BTreeMap<EntryKey, Value>,
    now: &BTreeMap<EntryKey, Value>,
) -> Result<(), String> {
    let changed = before
        .iter()
        .filter(|(k, _)| k.0 == "rate_card")
        .find(|(k, v)| now.get(*k) != Some(*v));
    let Some((k, _)) = changed else {
        return Ok(());
    };
    let next = now
        .keys()
        .chain(before.keys())
        .filter(|n| n.0 == "rate_card" && n.1 == k.1)
        .map(|n| n.2)
        .max()
        .unwrap_or(k.2)
        + 1;
    Err(format!(
        "rate_card `{}` version {} is already published and immutable, but the catalog {} it; \
         restore it and publish the change as version {next} with a later effective_from",
        k.1,
        k.2,
        if now.contains_key(k) {
            "changes"
        } else {
            "removes"
        },
    ))
}

/// Who records: `METERFLOW_ACTOR`, else `fallback`.
pub fn actor(fallback: &str) -> String {
    std::env::var("METERFLOW_ACTOR")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

/// The log as text: one block per change, newest last.
pub fn render(rows: &[Change]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        s.push_str("(no catalog changes recorded)\n");
    }
    for r in rows {
        let when = EventTime(r.changed_at as i64 * 1000);
        let version = if r.version > 0 {
            format!(" version {}", r.version)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{when}  {}  {} {} `{}`{version}",
            r.actor, r.action, r.entity, r.entity_id
        );
        if r.action != "changed" {
            continue;
        }
        let diff: Value = serde_json::from_str(&r.diff).unwrap_or(Value::Null);
        for c in diff["changes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "    {}: {} -> {}",
                c["field"].as_str().unwrap_or("?"),
                c["before"],
                c["after"]
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_field_is_recorded_with_before_and_after() {
        let key = ("contract".to_string(), "c1".to_string(), 0);
        let before: BTreeMap<EntryKey, Value> =
            [(key.clone(), json!({"id": "c1", "minimum_spend": "100"}))].into();
        let now: BTreeMap<EntryKey, Value> =
            [(key, json!({"id": "c1", "minimum_spend": "150"}))].into();
        let rows = changes(&before, &now, "ana", EventTime(0));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].action, "changed");
        let text = render(&rows);
        assert!(text.contains(r#"minimum_spend: "100" -> "150""#), "{text}");
        // The log's state is the new catalog: recording it again changes nothing.
        assert!(changes(&state(&rows), &now, "ana", EventTime(0)).is_empty());
    }
}
