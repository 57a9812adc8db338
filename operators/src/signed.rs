//! The state behind a signed output table: what the table holds, and what to write so it matches
//! what the dataflow says.
//!
//! Derived rows arrive as differential updates `(row, time, diff)`. A writer feeds them in with
//! [`SignedState::update`] and, at each flush, takes the [`Change`]s to write: updates that
//! cancel within a flush are never written, a retraction carries the version of the row it
//! cancels (so the history shows which row each retraction undoes), and an insertion gets the
//! flush's version.
//!
//! A resumed run starts from the rows the table already holds. The dataflow re-derives those rows
//! from restored state and emits them again in the first pricing round. The state absorbs that
//! emission against the held rows, so the table only sees the real changes.

use std::collections::BTreeMap;

use crate::Epoch;

/// One row to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<R> {
    pub row: R,
    /// +1 inserts, -1 retracts.
    pub sign: i8,
    /// The version of the inserted row (for a retraction: of the row it cancels).
    pub version: u64,
}

pub struct SignedState<R: Ord + Clone> {
    pending: BTreeMap<R, isize>,
    /// Rows the table holds, with their multiplicity and version.
    held: BTreeMap<R, (isize, u64)>,
    /// Rows restored from the table, absorbed once the frontier passes this epoch.
    restored_until: Option<Epoch>,
    restored: Vec<(R, isize)>,
}

impl<R: Ord + Clone> Default for SignedState<R> {
    fn default() -> Self {
        SignedState {
            pending: BTreeMap::new(),
            held: BTreeMap::new(),
            restored_until: None,
            restored: Vec::new(),
        }
    }
}

impl<R: Ord + Clone> SignedState<R> {
    /// A table that already holds `rows` (row, net multiplicity, version), which the dataflow
    /// will emit again by the end of the pricing round ending at `round_end`.
    pub fn resumed(rows: Vec<(R, isize, u64)>, round_end: Epoch) -> SignedState<R> {
        let mut s = SignedState::default();
        for (row, n, version) in rows {
            if n != 0 {
                s.held.insert(row.clone(), (n, version));
                s.restored.push((row, n));
            }
        }
        s.restored_until = Some(round_end);
        s
    }

    pub fn update(&mut self, row: R, diff: isize) {
        *self.pending.entry(row).or_insert(0) += diff;
    }

    /// The changes to write now, given that input before `frontier` is complete; `version` is
    /// the version of rows inserted by this flush.
    pub fn changes(&mut self, frontier: Option<Epoch>, version: u64) -> Vec<Change<R>> {
        if let Some(until) = self.restored_until {
            if frontier.is_none_or(|f| f > until) {
                // The dataflow has re-emitted the restored rows; they are already in the table.
                for (row, n) in std::mem::take(&mut self.restored) {
                    *self.pending.entry(row).or_insert(0) -= n;
                }
                self.restored_until = None;
            }
        }
        if self.restored_until.is_some() {
            return Vec::new();
        }
        let mut retractions = Vec::new();
        let mut insertions = Vec::new();
        for (row, diff) in std::mem::take(&mut self.pending) {
            if diff == 0 {
                continue;
            }
            let held = self.held.entry(row.clone()).or_insert((0, version));
            if diff < 0 {
                for _ in 0..diff.unsigned_abs() {
                    retractions.push(Change {
                        row: row.clone(),
                        sign: -1,
                        version: held.1,
                    });
                }
            } else {
                held.1 = version;
                for _ in 0..diff {
                    insertions.push(Change {
                        row: row.clone(),
                        sign: 1,
                        version,
                    });
                }
            }
            held.0 += diff;
            if held.0 == 0 {
                self.held.remove(&row);
            }
        }
        // Retractions first: a reader of the table in insertion order sees old before new.
        retractions.extend(insertions);
        retractions
    }

    /// The highest version among the rows held.
    pub fn max_version(&self) -> u64 {
        self.held.values().map(|(_, v)| *v).max().unwrap_or(0)
    }

    /// The rows the table holds now.
    pub fn held(&self) -> impl Iterator<Item = (&R, isize)> {
        self.held.iter().map(|(r, (n, _))| (r, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_updates_are_never_written_and_retractions_keep_versions() {
        let mut s = SignedState::default();
        s.update("a", 1);
        s.update("b", 1);
        s.update("b", -1);
        assert_eq!(
            s.changes(Some(1), 1),
            vec![Change {
                row: "a",
                sign: 1,
                version: 1
            }]
        );
        s.update("a", -1);
        s.update("c", 1);
        assert_eq!(
            s.changes(Some(2), 2),
            vec![
                Change {
                    row: "a",
                    sign: -1,
                    version: 1
                },
                Change {
                    row: "c",
                    sign: 1,
                    version: 2
                }
            ]
        );
        assert_eq!(s.held().collect::<Vec<_>>(), vec![(&"c", 1)]);
    }

    #[test]
    fn a_resumed_table_absorbs_the_re_emitted_rows() {
        let mut s = SignedState::resumed(vec![("a", 1, 7), ("b", 1, 7)], 11);
        // Nothing happens before the first round ends, even if the frontier moves.
        assert!(s.changes(Some(9), 9).is_empty());
        // The dataflow re-emits a and b, and b has changed into b2.
        s.update("a", 1);
        s.update("b2", 1);
        let changes = s.changes(Some(12), 12);
        assert_eq!(
            changes,
            vec![
                Change {
                    row: "b",
                    sign: -1,
                    version: 7
                },
                Change {
                    row: "b2",
                    sign: 1,
                    version: 12
                }
            ]
        );
    }
}
