//! Quarantine: rejected records wait, with their reason and remediation, until someone fixes
//! them. A fixed record is replayed under its original `event_id`; once accepted, its rejection
//! is marked resolved by a [`Resolution`] row (never by deleting the rejection), which keeps the
//! lineage from the rejected record to the replayed one. A record replayed twice is a duplicate
//! the second time, so it is billed once.

use std::collections::{BTreeMap, BTreeSet};

use crate::time::EventTime;

/// A rejection marked resolved: which rejected record, and which replayed record fixed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub resolved_at: EventTime,
    pub run_id: String,
    pub event_id: String,
    /// The rejection's reason code.
    pub reason: String,
    /// Where the rejected record was read (input path or topic, and offset).
    pub rejected_source: String,
    pub rejected_offset: u64,
    /// Where its fix was read.
    pub replay_source: String,
    pub replay_offset: u64,
    /// +1 resolves; a −1 row would take a resolution back.
    pub sign: i8,
}

/// One rejected record, as a replay matches fixes against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub reason: String,
    pub source: String,
    pub offset: u64,
}

/// Why a fixed record is not replayed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skipped {
    /// The record has no readable `event_id` (the fix must keep the original one).
    NoEventId { line: usize },
    /// No rejection has this `event_id`.
    NotQuarantined { event_id: String },
    /// Its rejection is resolved already (a replay is billed once).
    AlreadyResolved { event_id: String },
    /// The file holds it more than once; the first is replayed.
    Repeated { event_id: String },
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::NoEventId { line } => write!(
                f,
                "line {line}: no event_id; a fix keeps the event_id of the record it fixes"
            ),
            Skipped::NotQuarantined { event_id } => {
                write!(f, "{event_id}: no rejection has this event_id")
            }
            Skipped::AlreadyResolved { event_id } => {
                write!(f, "{event_id}: already replayed and accepted (billed once)")
            }
            Skipped::Repeated { event_id } => {
                write!(f, "{event_id}: repeated in the file; the first is replayed")
            }
        }
    }
}

/// The event id a record names, if it is a JSON object with one (natively or as a CloudEvent).
pub fn event_id_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("event_id")
        .or_else(|| v.get("id"))
        .and_then(|id| id.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// The fixed records to replay (in file order), and the ones not replayed with why.
pub fn select<'a>(
    fixed: impl IntoIterator<Item = &'a str>,
    quarantined: &BTreeMap<String, Quarantined>,
    resolved: &BTreeSet<String>,
) -> (Vec<(String, &'a str)>, Vec<Skipped>) {
    let mut replay = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, line) in fixed.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some(id) = event_id_of(line) else {
            skipped.push(Skipped::NoEventId { line: i + 1 });
            continue;
        };
        if resolved.contains(&id) {
            skipped.push(Skipped::AlreadyResolved { event_id: id });
        } else if !quarantined.contains_key(&id) {
            skipped.push(Skipped::NotQuarantined { event_id: id });
        } else if !seen.insert(id.clone()) {
            skipped.push(Skipped::Repeated { event_id: id });
        } else {
            replay.push((id, line));
        }
    }
    (replay, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unresolved_rejections_are_replayed_once() {
        let q = |reason: &str| Quarantined {
            reason: reason.into(),
            source: "events.jsonl".into(),
            offset: 0,
        };
        let quarantined: BTreeMap<String, Quarantined> = [
            ("e1".to_string(), q("unit_mismatch")),
            ("e2".to_string(), q("unknown_customer")),
            ("e3".to_string(), q("unit_mismatch")),
        ]
        .into();
        let resolved: BTreeSet<String> = ["e3".to_string()].into();
        let fixed = [
            r#"{"event_id":"e1","unit":"requests"}"#,
            r#"{"event_id":"e9"}"#,
            r#"{"event_id":"e3"}"#,
            "not json",
            "",
            r#"{"specversion":"1.0","id":"e2","subject":"acme"}"#,
            r#"{"event_id":"e1","unit":"other"}"#,
        ];
        let (replay, skipped) = select(fixed, &quarantined, &resolved);
        let ids: Vec<&str> = replay.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2"]);
        assert_eq!(replay[0].1, fixed[0]);
        assert_eq!(
            skipped,
            [
                Skipped::NotQuarantined {
                    event_id: "e9".into()
                },
                Skipped::AlreadyResolved {
                    event_id: "e3".into()
                },
                Skipped::NoEventId { line: 4 },
                Skipped::Repeated {
                    event_id: "e1".into()
                },
            ]
        );
    }
}
